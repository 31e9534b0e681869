"""Delivering events to real subscriber servers: signatures, retries, order, replay, SSRF."""

from __future__ import annotations

import copy
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import EVOLINK_COMPLETED, RelayServer, bound_socket
from tests.edge import fake_dns
from tests.subscriber_server import SubscriberServer


def evolink(task_id: str, status: str = "completed", progress: int = 100) -> dict[str, object]:
    payload = copy.deepcopy(EVOLINK_COMPLETED)
    payload.update(id=task_id, status=status, progress=progress)
    return payload


@pytest.fixture
def subscriber_factory() -> Iterator[Callable[..., SubscriberServer]]:
    started: list[SubscriberServer] = []

    def start(**kwargs: object) -> SubscriberServer:
        server = SubscriberServer(**kwargs).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def register(relay: RelayServer, sink: SubscriberServer, **filters: object) -> dict[str, object]:
    answer = relay.add_subscriber(sink.url, **filters)
    sink.secrets.append(str(answer["secret"]))
    return answer


def test_delivery_is_a_signed_cloudevent(
    relay_server: RelayServer, subscriber_factory: Callable[..., SubscriberServer]
) -> None:
    """A subscriber verifies the Standard Webhooks signature and parses a CloudEvent."""
    sink = subscriber_factory()
    subscriber = register(relay_server, sink)
    assert str(subscriber["secret"]).startswith("whsec_")
    url = relay_server.mint(metadata={"order": "o-1"})
    event_id = relay_server.post_callback(url, EVOLINK_COMPLETED).json()["event_id"]
    (receipt,) = sink.wait_for(1)
    assert not sink.errors
    assert receipt.verified_with == sink.secrets
    assert receipt.headers["webhook-id"] == event_id == receipt.event_id
    assert receipt.headers["content-type"] == "application/cloudevents+json"
    assert receipt.headers["user-agent"].startswith("callback-relay/")
    assert receipt.event.get_type() == "generation.succeeded"
    assert receipt.data["metadata"] == {"order": "o-1"}
    (delivery,) = relay_server.wait_deliveries(1, "succeeded")
    assert delivery["event_id"] == event_id
    assert delivery["attempt_count"] == 1
    detail = relay_server.delivery(delivery["id"])
    assert detail["attempts"][0]["status_code"] == 204
    # The secret is shown in full only when the subscriber is created.
    listed = relay_server.client.get("/v1/subscribers", headers=relay_server.admin).json()
    assert "secret" not in listed["items"][0]


def test_retry_schedule_then_failed_then_replay(
    relay_server: RelayServer, subscriber_factory: Callable[..., SubscriberServer]
) -> None:
    """Attempts at about 0, 1, 3 and 7 s; then failed; a replay starts a fresh cycle."""
    healthy = {"value": False}
    sink = subscriber_factory(script=lambda n: (204, 0.0) if healthy["value"] else (503, 0.0))
    register(relay_server, sink)
    url = relay_server.mint(reusable=True)
    event_id = relay_server.post_callback(url, EVOLINK_COMPLETED).json()["event_id"]
    receipts = sink.wait_for(4, timeout=15)
    (failed,) = relay_server.wait_deliveries(1, "failed", timeout=5)
    offsets = [r.at - receipts[0].at for r in receipts]
    for measured, expected in zip(offsets, [0, 1, 3, 7], strict=True):
        assert expected - 0.05 <= measured <= expected + 0.6, offsets
    time.sleep(1.2)
    assert len(sink.receipts) == 4  # nothing more after the delivery failed
    detail = relay_server.delivery(failed["id"])
    assert [a["status_code"] for a in detail["attempts"]] == [503] * 4
    assert detail["attempts"][0]["response_excerpt"] == "answer 0"
    assert failed["last_error"] == "HTTP 503"

    healthy["value"] = True
    replay = relay_server.client.post(
        f"/v1/deliveries/{failed['id']}/replay", headers=relay_server.admin
    )
    assert replay.status_code == 202
    assert replay.json()["replayed"] == 1
    receipts = sink.wait_for(5)
    assert receipts[-1].headers["webhook-id"] == event_id  # same id on every retry and replay
    relay_server.wait_deliveries(1, "succeeded")
    detail = relay_server.delivery(failed["id"])
    assert detail["attempts"][-1]["trigger"] == "replay"


def test_gone_disables_subscriber(
    relay_server: RelayServer, subscriber_factory: Callable[..., SubscriberServer]
) -> None:
    """410 Gone fails the delivery at once and disables the subscriber; replay then gets 409."""
    sink = subscriber_factory(script=lambda n: (410, 0.0))
    subscriber = register(relay_server, sink)
    url = relay_server.mint(reusable=True)
    relay_server.post_callback(url, evolink("t-gone-1"))
    (failed,) = relay_server.wait_deliveries(1, "failed")
    assert failed["attempt_count"] == 1
    info = relay_server.client.get(
        f"/v1/subscribers/{subscriber['id']}", headers=relay_server.admin
    )
    assert info.json()["enabled"] is False
    assert "410" in info.json()["disabled_reason"]
    relay_server.post_callback(url, evolink("t-gone-2"))
    time.sleep(0.3)
    assert len(sink.receipts) == 1  # a disabled subscriber gets no new deliveries
    conflict = relay_server.client.post(
        f"/v1/deliveries/{failed['id']}/replay", headers=relay_server.admin
    )
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "subscriber_disabled"
    bulk = relay_server.client.post(
        "/v1/deliveries/replay",
        json={"subscriber_id": subscriber["id"]},
        headers=relay_server.admin,
    )
    assert bulk.status_code == 409


def test_subscriber_filters(
    relay_server: RelayServer, subscriber_factory: Callable[..., SubscriberServer]
) -> None:
    """Providers and event types (with generation.* wildcards) select what each one receives."""
    everything = subscriber_factory()
    succeeded_only = subscriber_factory()
    apiframe_only = subscriber_factory()
    wildcard = subscriber_factory()
    register(relay_server, everything)
    register(relay_server, succeeded_only, event_types=["generation.succeeded"])
    register(relay_server, apiframe_only, providers=["apiframe"])
    register(relay_server, wildcard, providers=["evolink"], event_types=["generation.*"])
    url = relay_server.mint(reusable=True)
    relay_server.post_callback(url, evolink("t-f", "processing", 50))
    relay_server.post_callback(url, evolink("t-f", "completed", 100))
    everything.wait_for(2)
    wildcard.wait_for(2)
    succeeded_only.wait_for(1)
    time.sleep(0.3)
    assert [r.event.get_type() for r in succeeded_only.receipts] == ["generation.succeeded"]
    assert apiframe_only.receipts == []
    bad = relay_server.client.post(
        "/v1/subscribers",
        json={"url": everything.url, "event_types": ["generation.done"]},
        headers=relay_server.admin,
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_subscriber"


def test_secret_rotation_signs_with_both(
    relay_server: RelayServer, subscriber_factory: Callable[..., SubscriberServer]
) -> None:
    """After rotation both the old and the new secret verify the same delivery."""
    sink = subscriber_factory()
    subscriber = register(relay_server, sink)
    rotated = relay_server.client.post(
        f"/v1/subscribers/{subscriber['id']}/rotate-secret", headers=relay_server.admin
    )
    assert rotated.status_code == 200
    new_secret = rotated.json()["secret"]
    assert new_secret != subscriber["secret"]
    sink.secrets.append(new_secret)
    relay_server.post_callback(relay_server.mint(reusable=True), EVOLINK_COMPLETED)
    (receipt,) = sink.wait_for(1)
    assert sorted(receipt.verified_with) == sorted([subscriber["secret"], new_secret])
    assert len(receipt.headers["webhook-signature"].split()) == 2


def test_per_task_order_held_while_retrying(
    relay_server: RelayServer, subscriber_factory: Callable[..., SubscriberServer]
) -> None:
    """A later event of a task waits while an earlier one retries; other tasks do not wait."""
    sink = subscriber_factory(script=lambda n: (500, 0.0) if n == 0 else (204, 0.0))
    register(relay_server, sink)
    url = relay_server.mint(reusable=True)
    relay_server.post_callback(url, evolink("t-order", "pending", 0))
    sink.wait_for(1)
    relay_server.post_callback(url, evolink("t-order", "processing", 50))
    relay_server.post_callback(url, evolink("t-order", "completed", 100))
    relay_server.post_callback(url, evolink("t-other", "completed", 100))
    receipts = sink.wait_for(5)
    order = [(r.data["task_id"], r.data["status"]) for r in receipts]
    assert order[0] == ("t-order", "queued")
    assert order[1] == ("t-other", "succeeded")  # not held behind t-order's retry
    assert [o for o in order if o[0] == "t-order"] == [
        ("t-order", "queued"),
        ("t-order", "queued"),
        ("t-order", "running"),
        ("t-order", "succeeded"),
    ]


def test_slow_subscriber_does_not_delay_others(
    relay_server: RelayServer, subscriber_factory: Callable[..., SubscriberServer]
) -> None:
    """A subscriber taking 3 s per request does not delay a fast one."""
    slow = subscriber_factory(script=lambda n: (204, 3.0))
    fast = subscriber_factory()
    register(relay_server, slow)
    register(relay_server, fast)
    url = relay_server.mint(reusable=True)
    started = time.time()
    for n in range(30):
        relay_server.post_callback(url, evolink(f"t-slow-{n}"))
    fast.wait_for(30, timeout=3)
    assert time.time() - started < 2.5
    assert len(slow.receipts) == 0


def test_stalled_subscribers_leave_slots_for_a_healthy_one(
    relay_factory: Callable[..., RelayServer],
    subscriber_factory: Callable[..., SubscriberServer],
) -> None:
    """As many stalled subscribers as the worker has slots: each holds only its fair share,
    so a healthy subscriber is never kept waiting for one."""
    relay = relay_factory(delivery_timeout=1.5, delivery_concurrency=8, retry_delays=(0.5,))
    stalled = [subscriber_factory(script=lambda n: (204, 3.0)) for _ in range(6)]
    healthy = subscriber_factory()
    for sink in [*stalled, healthy]:
        register(relay, sink)
    url = relay.mint(reusable=True)
    late = []
    for n in range(20):
        sent = time.time()
        relay.post_callback(url, evolink(f"t-stall-{n}"))
        healthy.wait_for(n + 1, timeout=5)
        late.append(time.time() - sent)
        time.sleep(0.05)
    # Without fair shares the stalled six fill all 8 slots for 1.5 s at a time.
    assert max(late) < 1.0, late
    pending = relay.sql(
        lambda conn: conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'"
        ).fetchone()[0]
    )
    assert pending > 0  # the stalled subscribers' deliveries are still being retried
    # Each stalled server waits for its sleeping requests when it stops: all at once.
    stopping = [threading.Thread(target=sink.stop) for sink in stalled]
    for thread in stopping:
        thread.start()
    for thread in stopping:
        thread.join()


def test_bulk_replay_by_subscriber(
    relay_server: RelayServer, subscriber_factory: Callable[..., SubscriberServer]
) -> None:
    """Bulk replay takes failed deliveries of the chosen subscriber only."""
    relay = relay_server
    state = {"up": False}
    first = subscriber_factory(script=lambda n: (204, 0.0) if state["up"] else (500, 0.0))
    second = subscriber_factory(script=lambda n: (204, 0.0) if state["up"] else (500, 0.0))
    sub_one = register(relay, first)
    register(relay, second)
    url = relay.mint(reusable=True)
    for n in range(3):
        relay.post_callback(url, evolink(f"t-bulk-{n}"))
    relay.wait_deliveries(6, "failed", timeout=20)
    state["up"] = True
    answer = relay.client.post(
        "/v1/deliveries/replay", json={"subscriber_id": sub_one["id"]}, headers=relay.admin
    )
    assert answer.status_code == 202
    assert answer.json()["replayed"] == 3
    relay.wait_deliveries(3, "succeeded")
    assert len(relay.deliveries(status="failed")) == 3
    everything = relay.client.post("/v1/deliveries/replay", json={}, headers=relay.admin)
    assert everything.json()["replayed"] == 3
    relay.wait_deliveries(6, "succeeded")


def test_redeliver_to_a_later_subscriber(
    relay_server: RelayServer, subscriber_factory: Callable[..., SubscriberServer]
) -> None:
    """A subscriber added later receives an older event only when asked."""
    url = relay_server.mint(reusable=True)
    event_id = relay_server.post_callback(url, EVOLINK_COMPLETED).json()["event_id"]
    late = subscriber_factory()
    subscriber = register(relay_server, late)
    time.sleep(0.3)
    assert late.receipts == []
    answer = relay_server.client.post(
        f"/v1/events/{event_id}/redeliver",
        json={"subscriber_id": subscriber["id"]},
        headers=relay_server.admin,
    )
    assert answer.status_code == 202
    (receipt,) = late.wait_for(1)
    assert receipt.event_id == event_id


def test_private_targets_refused_at_registration(
    relay_factory: Callable[..., RelayServer],
) -> None:
    """Loopback, private, metadata and non-http targets get 422 target_not_allowed."""
    relay = relay_factory(allow_private_targets=False)
    for url in (
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]/x",
        "http://10.0.0.7/x",
        "ftp://example.com/x",
    ):
        response = relay.client.post("/v1/subscribers", json={"url": url}, headers=relay.admin)
        assert response.status_code == 422, (url, response.text)
        assert response.json()["error"]["code"].startswith(("target_", "invalid_url")), url


def test_private_target_refused_again_at_delivery(
    relay_factory: Callable[..., RelayServer], subscriber_factory: Callable[..., SubscriberServer]
) -> None:
    """A target registered while allowed is not contacted once the policy forbids it."""
    sink = subscriber_factory()
    open_relay = relay_factory(allow_private_targets=True)
    register(open_relay, sink)
    open_relay.stop()
    closed = relay_factory(allow_private_targets=False, retry_delays=())
    closed.post_callback(closed.mint(reusable=True), EVOLINK_COMPLETED)
    (failed,) = closed.wait_deliveries(1, "failed")
    assert "not allowed" in failed["last_error"]
    assert sink.requests == 0


def test_connection_errors_are_retried(relay_factory: Callable[..., RelayServer]) -> None:
    """A refused connection is a failed attempt, retried by the policy, recorded as refused."""
    relay = relay_factory(retry_delays=(0.1, 0.1))
    closed = bound_socket()  # bound, never listening: connections are refused
    port = closed.getsockname()[1]
    try:
        relay.add_subscriber(f"http://127.0.0.1:{port}/hook")
        relay.post_callback(relay.mint(reusable=True), EVOLINK_COMPLETED)
        (failed,) = relay.wait_deliveries(1, "failed")
        assert failed["attempt_count"] == 3
        detail = relay.delivery(failed["id"])
        assert [(a["status_code"], a["error"]) for a in detail["attempts"]] == [
            (None, f"connection refused: 127.0.0.1:{port}")
        ] * 3
        assert failed["last_error"] == f"connection refused: 127.0.0.1:{port}"
    finally:
        closed.close()


def test_a_stalled_subscriber_is_recorded_as_timed_out(
    relay_factory: Callable[..., RelayServer], subscriber_factory: Callable[..., SubscriberServer]
) -> None:
    """An attempt the subscriber does not answer within the delivery timeout says so."""
    relay = relay_factory(delivery_timeout=0.5, retry_delays=())
    sink = subscriber_factory(script=lambda n: (204, 2.0))
    register(relay, sink)
    relay.post_callback(relay.mint(reusable=True), EVOLINK_COMPLETED)
    (failed,) = relay.wait_deliveries(1, "failed")
    (only,) = relay.delivery(failed["id"])["attempts"]
    assert (only["status_code"], only["error"]) == (None, "timed out after 0.5 s")
    assert 450 <= only["latency_ms"] < 1500
    assert sink.requests == 1


def test_a_name_that_does_not_resolve_is_recorded_as_a_dns_failure(
    relay_factory: Callable[..., RelayServer],
) -> None:
    """A subscriber whose name stopped resolving: the attempt says DNS, not a connection."""

    def not_found() -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    relay = relay_factory(retry_delays=())
    relay.add_subscriber("http://gone.example:8080/hook")  # private targets: not resolved
    with fake_dns(fallback=True) as table:
        table["gone.example"] = not_found
        relay.post_callback(relay.mint(reusable=True), EVOLINK_COMPLETED)
        (failed,) = relay.wait_deliveries(1, "failed")
    assert "gone.example" in table.lookups
    assert failed["last_error"] == "DNS lookup failed: gone.example: Name or service not known"
