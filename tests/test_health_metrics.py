"""/healthz, /readyz and /metrics through a real relay; multi-process metrics in subprocesses."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.health import CLAIM_STALE_SECONDS, worker_problem
from service.metrics import RecentTally
from tests.conftest import (
    EVOLINK_COMPLETED,
    RelayServer,
    ServerThread,
    bound_socket,
    make_settings,
)
from tests.fakes import FakeClock
from tests.subscriber_server import SubscriberServer


def evolink(task_id: str, status: str = "completed", progress: int = 100) -> dict[str, object]:
    payload = copy.deepcopy(EVOLINK_COMPLETED)
    payload.update(id=task_id, status=status, progress=progress)
    return payload


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(relay: RelayServer, **headers: str) -> Samples:
    """Every sample of ``GET /metrics`` as ``{(name, sorted labels): value}``."""
    response = relay.client.get("/metrics", headers=headers or relay.admin)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return float(samples.get((name, tuple(sorted(labels.items()))), 0.0))


# -- health -----------------------------------------------------------------------------------


def test_healthz_and_readyz(relay_server: RelayServer) -> None:
    """A fresh relay is alive and ready: the store commits and the worker claims."""
    assert relay_server.client.get("/healthz").json() == {"status": "ok"}
    ready = relay_server.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"store": "ok", "worker": "ok"}}


def test_readyz_says_why_when_the_worker_stopped(relay_server: RelayServer) -> None:
    """A worker that stopped claiming makes the relay not ready, with the reason."""
    worker = relay_server.thread.app.state.worker
    relay_server.in_loop(worker.stop())
    ready = relay_server.client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["error"]["code"] == "not_ready"
    assert "the delivery worker is not running" in body["error"]["message"]
    assert body["checks"] == {"store": "ok", "worker": "the delivery worker is not running"}


def test_readyz_says_why_when_the_store_cannot_commit(relay_server: RelayServer) -> None:
    relay_server.in_loop(relay_server.relay.store.close())
    ready = relay_server.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["store"] == "The store is not open."
    assert "store: The store is not open." in ready.json()["error"]["message"]
    assert relay_server.client.get("/healthz").status_code == 200  # alive all the same


def test_worker_problem_stale_or_saturated() -> None:
    now = time.time()
    worker = SimpleNamespace(running=True, in_flight=0, concurrency=4, last_claim_at=now - 1)
    assert worker_problem(worker, now) is None
    worker.last_claim_at = now - CLAIM_STALE_SECONDS - 5
    assert worker_problem(worker, now) == "the delivery worker has not claimed for 15 s"
    worker.in_flight = 4  # every slot busy: it is working, not stuck
    assert worker_problem(worker, now) is None
    worker.in_flight, worker.last_claim_at = 0, 0.0
    assert worker_problem(worker, now) == "the delivery worker has not claimed yet"
    worker.running = False
    assert worker_problem(worker, now) == "the delivery worker is not running"


@pytest.fixture
def api_only(tmp_path: Path) -> Iterator[RelayServer]:
    """A relay that runs no delivery worker (``relay serve --no-worker``)."""
    sock = bound_socket()
    settings = make_settings(tmp_path, sock.getsockname()[1])
    thread = ServerThread(create_app(settings, run_worker=False), sock).start()
    server = RelayServer(f"http://127.0.0.1:{thread.port}", settings, thread)
    yield server
    server.stop()


def test_relay_without_worker_is_ready(api_only: RelayServer) -> None:
    relay = api_only
    ready = relay.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["worker"] == "not run by this process"


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_need_the_admin_token_unless_public(
    relay_factory: Callable[..., RelayServer],
) -> None:
    private = relay_factory()
    refused = private.client.get("/metrics")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    wrong = private.client.get("/metrics", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert private.client.get("/metrics", headers=private.admin).status_code == 200
    public = relay_factory(metrics_public=True)
    assert public.client.get("/metrics").status_code == 200


def test_callback_outcomes_and_events_are_counted(relay_server: RelayServer) -> None:
    """Accepted, duplicate, superseded and each refusal are counted by provider and outcome;
    unknown providers count as ``unknown`` (no label from made-up paths)."""
    url = relay_server.mint()
    before = scrape(relay_server)
    assert relay_server.post_callback(url, evolink("t-m1")).status_code == 200
    assert relay_server.post_callback(url, evolink("t-m1")).json()["duplicate"] is True
    late = relay_server.post_callback(url, evolink("t-m1", "processing", 50))
    assert late.json()["superseded"] is True
    assert relay_server.post_callback(url + "x", evolink("t-m2")).status_code == 401
    not_json = relay_server.client.post(url, content=b"not json")
    assert (not_json.status_code, not_json.json()["error"]["code"]) == (400, "invalid_json")
    made_up = relay_server.client.post("/callbacks/made-up-provider-123/tok", json={})
    assert made_up.status_code == 404
    after = scrape(relay_server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    callbacks = "relay_callbacks_total"
    assert delta(callbacks, provider="evolink", outcome="accepted") == 1
    assert delta(callbacks, provider="evolink", outcome="duplicate") == 1
    assert delta(callbacks, provider="evolink", outcome="superseded") == 1
    assert delta(callbacks, provider="evolink", outcome="invalid_token") == 1
    assert delta(callbacks, provider="evolink", outcome="invalid_json") == 1
    assert delta(callbacks, provider="unknown", outcome="unknown_provider") == 1
    assert not any("made-up" in str(key) for key in after)
    events = "relay_events_total"
    assert delta(events, type="generation.succeeded", state="emitted") == 1
    assert delta(events, type="generation.running", state="superseded") == 1
    assert value(after, "relay_store_up") == 1
    for provider in ("evolink", "apiframe", "rivya"):  # no watch registered: 0, but exported
        assert ("relay_watches_active", (("provider", provider),)) in after


def test_the_recent_tally_counts_the_last_hour_by_minute() -> None:
    """The ops console's "last hour": a count stays for the minutes it covers, then leaves."""
    clock = FakeClock(60 * 1_000_000 + 30)  # half a minute into a minute
    tally = RecentTally(minutes=60, clock=clock)
    tally.add("evolink:accepted")
    tally.add("evolink:accepted", count=2)
    clock.advance(60)
    tally.add("evolink:duplicate")
    assert tally.totals() == {"evolink:accepted": 3, "evolink:duplicate": 1}
    clock.advance(59 * 60)  # the first minute is now an hour old: out of the window
    assert tally.totals() == {"evolink:duplicate": 1}
    tally.add("apiframe:accepted")  # a new minute's bucket drops the expired ones
    clock.advance(60)
    assert tally.totals() == {"apiframe:accepted": 1}
    assert tally.started_at == 60 * 1_000_000 + 30


def test_delivery_attempts_latency_and_backlog_gauges(
    relay_factory: Callable[..., RelayServer],
) -> None:
    """Attempts by outcome with a latency histogram; pending, failed and the oldest pending
    delivery come from the store at scrape time."""
    healthy = {"value": False}
    sink = SubscriberServer(script=lambda n: (204, 0.0) if healthy["value"] else (503, 0.0)).start()
    try:
        relay = relay_factory(retry_delays=(0.2,))
        relay.add_subscriber(sink.url)
        before = scrape(relay)
        assert value(before, "relay_deliveries_failed") == 0
        relay.post_callback(relay.mint(), evolink("t-att"))
        (failed,) = relay.wait_deliveries(1, "failed")
        middle = scrape(relay)
        assert value(middle, "relay_deliveries_failed") == 1
        assert value(middle, "relay_deliveries_pending") == 0
        assert value(middle, "relay_oldest_pending_delivery_age_seconds") == 0
        healthy["value"] = True
        replay = relay.client.post(f"/v1/deliveries/{failed['id']}/replay", headers=relay.admin)
        assert replay.status_code == 202
        relay.wait_deliveries(1, "succeeded")
        after = scrape(relay)
    finally:
        sink.stop()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    attempts = "relay_delivery_attempts_total"
    assert delta(attempts, outcome="retry") == 1
    assert delta(attempts, outcome="failed") == 1
    assert delta(attempts, outcome="succeeded") == 1
    assert delta("relay_delivery_attempt_duration_seconds_count") == 3
    assert delta("relay_delivery_attempt_duration_seconds_bucket", le="+Inf") == 3
    assert delta("relay_delivery_attempt_duration_seconds_sum") > 0
    assert value(after, "relay_deliveries_failed") == 0


def test_oldest_pending_age_is_read_at_scrape_time(api_only: RelayServer) -> None:
    relay = api_only
    relay.add_subscriber("http://127.0.0.1:9/never")
    relay.post_callback(relay.mint(), evolink("t-old"))
    time.sleep(1.1)
    samples = scrape(relay)
    assert value(samples, "relay_deliveries_pending") == 1
    assert value(samples, "relay_oldest_pending_delivery_age_seconds") >= 1.0


def test_metrics_add_up_over_several_processes(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, a scrape answered by one process sums every process's
    counters (uvicorn --workers N)."""
    directory = tmp_path / "prom"
    directory.mkdir()
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(directory))
    count = textwrap.dedent(
        """
        import sys
        from service import metrics
        for _ in range(int(sys.argv[1])):
            metrics.count_callback("evolink", "accepted")
            metrics.count_event("generation.succeeded", "accepted")
        metrics.count_attempt("succeeded", 120.0)
        """
    )
    for times in (3, 4):
        subprocess.run([sys.executable, "-c", count, str(times)], env=env, check=True, timeout=60)
    render = "import sys; from service import metrics; print(metrics.exposition([]).decode())"
    text = subprocess.run(
        [sys.executable, "-c", render],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert value(samples, "relay_callbacks_total", provider="evolink", outcome="accepted") == 7
    assert value(samples, "relay_events_total", type="generation.succeeded", state="emitted") == 7
    assert value(samples, "relay_delivery_attempts_total", outcome="succeeded") == 2
    assert value(samples, "relay_delivery_attempt_duration_seconds_count") == 2


@pytest.mark.postgres
@pytest.mark.slow
def test_relay_serve_workers_sum_their_metrics(tmp_path: Path) -> None:
    """`relay serve --workers 2` on PostgreSQL: whichever process answers the scrape, the
    callback counter is the sum over both (a shared PROMETHEUS_MULTIPROC_DIR)."""
    from tests.relay_process import ADMIN, RelayProcess
    from tests.test_store_contract import fresh_schema

    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    with fresh_schema() as url:
        relay = RelayProcess(tmp_path, port, "--workers", "2", RELAY_DATABASE_URL=url).start()
        try:
            admin = {"authorization": f"Bearer {ADMIN}"}
            minted = httpx.post(
                f"{relay.base}/v1/callback-urls",
                json={"provider": "evolink", "reusable": True},
                headers=admin,
            ).json()["url"]
            with httpx.Client() as client:  # new connections: both processes get some
                for n in range(40):
                    posted = client.post(
                        minted, json=evolink(f"t-mp-{n}"), headers={"connection": "close"}
                    )
                    assert posted.status_code == 200
            for _ in range(6):  # any process may answer; each must report all 40
                text = httpx.get(
                    f"{relay.base}/metrics", headers=admin | {"connection": "close"}
                ).text
                samples = {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(text)
                    for s in family.samples
                }
                accepted = value(
                    samples, "relay_callbacks_total", provider="evolink", outcome="accepted"
                )
                assert accepted == 40
        finally:
            relay.stop()
