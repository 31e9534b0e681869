"""Several relay processes on one PostgreSQL: exactly-once delivery, a killed replica, outages."""

from __future__ import annotations

import asyncio
import copy
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import EVOLINK_COMPLETED, RelayServer, bound_socket
from tests.relay_process import ADMIN, RelayProcess
from tests.subscriber_server import SubscriberServer
from tests.test_store_contract import ThreadedProxy, fresh_schema

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


def _free_port() -> int:
    sock = bound_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str) -> Iterator[Callable[..., RelayProcess]]:
    started: list[RelayProcess] = []

    def start(*args: str, **env: str) -> RelayProcess:
        relay = RelayProcess(
            tmp_path,
            _free_port(),
            *args,
            **{"RELAY_DATABASE_URL": pg_url, "RELAY_DELIVERY_TIMEOUT": "1", **env},
        ).start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


def _payload(n: int) -> dict[str, object]:
    payload = copy.deepcopy(EVOLINK_COMPLETED)
    payload["id"] = f"task-unified-replica-{n}"
    return payload


async def _post_all(urls: list[str], count: int, concurrency: int = 32) -> set[str]:
    """POST ``count`` callbacks spread over ``urls``; the event ids answered 2xx."""
    acked: set[str] = set()
    refusals: list[str] = []
    numbers = iter(range(count))

    async def sender(client: httpx.AsyncClient) -> None:
        for n in numbers:
            # As a provider does, a callback not answered 2xx is sent again (to the other
            # replica as well): the same task's update is one event, whichever answers.
            for attempt in range(5):
                try:
                    response = await client.post(urls[(n + attempt) % len(urls)], json=_payload(n))
                except httpx.TransportError as exc:
                    refusals.append(repr(exc))
                    continue
                if response.status_code == 200:
                    acked.add(response.json()["event_id"])
                    break
                refusals.append(f"{response.status_code} {response.text[:200]}")

    async with httpx.AsyncClient(timeout=10) as client:
        await asyncio.gather(*(sender(client) for _ in range(concurrency)))
    assert len(acked) == count, f"{count - len(acked)} never accepted; refusals: {refusals[:5]}"
    return acked


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.slow
def test_two_replicas_deliver_2000_callbacks_exactly_once(
    replicas: Callable[..., RelayProcess],
) -> None:
    """2,000 callbacks over two processes: every event reaches the subscriber once.

    The delivery timeout is generous: an attempt that times out is retried (at least once, by
    design), so a timeout on a loaded machine would be a duplicate this test did not ask about.
    """
    sink = SubscriberServer().start()
    try:
        first, second = replicas(RELAY_DELIVERY_TIMEOUT="10"), replicas(RELAY_DELIVERY_TIMEOUT="10")
        answer = httpx.post(
            f"{first.base}/v1/subscribers", json={"url": sink.url}, headers=first.admin
        ).json()
        sink.secrets.append(answer["secret"])
        url = httpx.post(
            f"{first.base}/v1/callback-urls",
            json={"provider": "evolink", "reusable": True},
            headers=first.admin,
        ).json()["url"]
        path = url[len(first.base) :]
        acked = asyncio.run(_post_all([first.base + path, second.base + path], 2000))
        assert len(acked) == 2000
        assert _wait_until(lambda: len(sink.accepted_ids()) >= 2000, timeout=60)
        # Nothing more can be sent once no delivery is pending (retries included).
        assert _wait_until(
            lambda: (
                not httpx.get(
                    f"{first.base}/v1/deliveries",
                    params={"status": "pending", "limit": 1},
                    headers=first.admin,
                ).json()["items"]
            ),
            timeout=30,
        )
        received = [r.event_id for r in list(sink.receipts)]
        assert set(received) == acked
        assert len(received) == 2000, f"{len(received) - 2000} duplicates"
        assert not sink.errors
        for relay in (first, second):
            assert relay.process is not None and relay.process.poll() is None
            assert httpx.get(f"{relay.base}/readyz").status_code == 200
    finally:
        sink.stop()


@pytest.mark.slow
def test_killed_replica_leases_expire_and_the_other_delivers(
    replicas: Callable[..., RelayProcess],
) -> None:
    """SIGKILL one replica mid-delivery: the other delivers what it held once leases lapse."""
    sink = SubscriberServer(script=lambda n: (204, 0.5)).start()
    try:
        doomed, survivor = replicas(), replicas()
        answer = httpx.post(
            f"{doomed.base}/v1/subscribers", json={"url": sink.url}, headers=doomed.admin
        ).json()
        sink.secrets.append(answer["secret"])
        url = httpx.post(
            f"{doomed.base}/v1/callback-urls",
            json={"provider": "evolink", "reusable": True},
            headers=doomed.admin,
        ).json()["url"]
        acked = asyncio.run(_post_all([url], 300, concurrency=16))
        assert len(acked) == 300
        assert _wait_until(lambda: sink.requests >= 20, timeout=10)
        doomed.kill()
        # Lease = 3 x RELAY_DELIVERY_TIMEOUT + 10 s: what the dead replica held comes back.
        assert _wait_until(lambda: acked <= sink.accepted_ids(), timeout=60), (
            f"{len(acked - sink.accepted_ids())} acknowledged events never delivered"
        )
        # Attempts the dead replica made but never recorded come back when their leases lapse.
        assert _wait_until(lambda: not survivor.all_deliveries("pending"), timeout=40)
        duplicates = len(sink.receipts) - len(sink.accepted_ids())
        # Only what the dead replica had sent but not yet recorded may repeat: attempts in
        # flight (at most the per-subscriber limit, 64) plus answers whose record had not yet
        # committed. Everything else it held is sent once, by the survivor.
        assert duplicates <= 64 + 32, duplicates
    finally:
        sink.stop()


def test_api_and_worker_roles_split(replicas: Callable[..., RelayProcess]) -> None:
    """`relay serve --no-worker` only receives; `relay worker` (another process) delivers."""
    sink = SubscriberServer().start()
    worker = None
    try:
        api = replicas("--no-worker")
        answer = httpx.post(
            f"{api.base}/v1/subscribers", json={"url": sink.url}, headers=api.admin
        ).json()
        sink.secrets.append(answer["secret"])
        url = httpx.post(
            f"{api.base}/v1/callback-urls",
            json={"provider": "evolink", "reusable": True},
            headers=api.admin,
        ).json()["url"]
        acked = asyncio.run(_post_all([url], 20, concurrency=4))
        time.sleep(0.5)
        assert sink.requests == 0  # nobody delivers yet
        import subprocess
        import sys

        worker = subprocess.Popen(
            [sys.executable, "-m", "service", "worker"],
            env=api.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert _wait_until(lambda: acked <= sink.accepted_ids(), timeout=20)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        sink.stop()


def test_postgres_outage_gives_503_and_recovers(
    pg_url: str, relay_factory: Callable[..., RelayServer]
) -> None:
    """PostgreSQL away: callbacks 503 (never 2xx), /readyz 503; back: the relay recovers alone."""
    proxy = ThreadedProxy(pg_url)
    try:
        relay = relay_factory(database_url=proxy.url)
        url = relay.mint(reusable=True)
        assert relay.post_callback(url, _payload(1)).status_code == 200
        proxy.cut()
        refused = relay.post_callback(url, _payload(2))
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "storage_unavailable"
        asked = time.monotonic()
        ready = relay.client.get("/readyz")
        # In time for a load balancer's probe, though the pool would wait 5 s for a connection.
        assert time.monotonic() - asked < 3.0
        assert ready.status_code == 503 and ready.json()["checks"]["store"] != "ok"
        proxy.restore()
        assert _wait_until(
            lambda: relay.post_callback(url, _payload(3)).status_code == 200, timeout=20
        )
        assert relay.client.get("/readyz").status_code == 200
        stored = {e["subject"] for e in relay.events()}
        assert stored == {"task-unified-replica-1", "task-unified-replica-3"}
    finally:
        proxy.close()


def test_the_overview_counts_every_replica_and_says_which_figures_are_one_process(
    replicas: Callable[..., RelayProcess],
) -> None:
    """Callbacks accepted by one replica show on the other's /ops overview (the store's hour);
    a duplicate and a refusal, never stored, show only on the replica that answered them, and
    the page says so."""
    from tests.test_ops_console import sign_in

    first, second = replicas(), replicas()
    url = httpx.post(
        f"{first.base}/v1/callback-urls",
        json={"provider": "evolink", "reusable": True},
        headers=first.admin,
    ).json()["url"]
    for n in range(3):
        assert httpx.post(url, json=_payload(n)).status_code == 200
    assert httpx.post(url, json=_payload(0)).status_code == 200  # a duplicate
    assert httpx.post(url + "x", json=_payload(9)).status_code == 401  # refused: a bad token

    def figures(replica: RelayProcess) -> tuple[dict[str, str], str]:
        with httpx.Client(base_url=replica.base, timeout=10) as client:
            sign_in(client, token=ADMIN)
            page = client.get("/ops")
        assert page.status_code == 200, page.text[:300]
        stats = re.findall(
            r'<div class="k">([^<]+)</div>\s*<div class="n">([^<]+)</div>', page.text
        )
        return dict(stats), page.text

    answered, answered_page = figures(first)
    other, other_page = figures(second)
    assert answered["Accepted, last hour"] == other["Accepted, last hour"] == "3"
    assert (answered["Refused · this process"], other["Refused · this process"]) == ("1", "0")
    for page in (answered_page, other_page):
        text = " ".join(page.split())
        assert 'from the store (every replica) unless marked "this process"' in text
        assert "Events in the last hour, by type · every replica" in text
    assert "duplicates: 1; since this process started" in answered_page
