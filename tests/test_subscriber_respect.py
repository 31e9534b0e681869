"""Respecting subscribers, through a real relay and real subscribers: ``Retry-After``, custom
headers, a per-subscriber rate limit, and metrics per subscriber."""

from __future__ import annotations

import concurrent.futures
import email.utils
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.pacing import CATCH_UP_SECONDS
from tests.conftest import EVOLINK_COMPLETED, RelayServer
from tests.subscriber_server import SubscriberServer
from tests.test_store_contract import fresh_schema


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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Settings for a relay on SQLite (the default file) or on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield {}
        return
    with fresh_schema() as url:
        yield {"database_url": url}


def register(relay: RelayServer, sink: SubscriberServer, **body: object) -> dict[str, object]:
    answer = relay.add_subscriber(sink.url, **body)
    sink.secrets.append(str(answer["secret"]))
    return answer


def test_retry_after_is_honoured_and_the_delivery_still_fails_after_its_last_attempt(
    relay_factory: Callable[..., RelayServer],
    subscriber_factory: Callable[..., SubscriberServer],
    database: dict[str, Any],
) -> None:
    """429 + ``Retry-After: 2`` (seconds), then 503 + an HTTP-date, then 429 again: each next
    attempt comes no sooner than asked (the policy alone would retry after 0.1 s), and the
    third answer, the last attempt of the cycle, fails the delivery."""

    def headers(n: int) -> dict[str, str]:
        if n == 1:  # two seconds from now, to the second: at least one second of waiting
            return {"Retry-After": email.utils.formatdate(time.time() + 2, usegmt=True)}
        return {"Retry-After": "2"}

    sink = subscriber_factory(
        script=lambda n: (429 if n != 1 else 503, 0.0), answer_headers=headers
    )
    relay = relay_factory(retry_delays=(0.1, 0.1), **database)
    register(relay, sink)
    relay.post_callback(relay.mint(), EVOLINK_COMPLETED)
    (failed,) = relay.wait_deliveries(1, "failed", timeout=15)
    receipts = sink.wait_for(3)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(receipts)]
    assert gaps[0] >= 2.0, gaps
    assert gaps[1] >= 1.0, gaps
    assert max(gaps) < 4.0, gaps
    time.sleep(0.5)
    assert len(sink.receipts) == 3  # no attempt added by the last Retry-After
    detail = relay.delivery(str(failed["id"]))
    assert [a["status_code"] for a in detail["attempts"]] == [429, 503, 429]


GATEWAY_KEY = "gw-key-0123456789abcdef"


def test_custom_headers_are_sent_shown_masked_and_never_logged(
    relay_factory: Callable[..., RelayServer],
    subscriber_factory: Callable[..., SubscriberServer],
    database: dict[str, Any],
    capfd: pytest.CaptureFixture[str],
) -> None:
    sink = subscriber_factory(script=lambda n: (500, 0.0) if n == 0 else (204, 0.0))
    relay = relay_factory(retry_delays=(0.1,), **database)
    created = register(relay, sink, headers={"X-Api-Key": GATEWAY_KEY, "X-Tenant": "acme"})
    assert created["headers"] == {"X-Api-Key": "***cdef", "X-Tenant": "***"}
    relay.post_callback(relay.mint(), EVOLINK_COMPLETED)
    relay.wait_deliveries(1, "succeeded")
    first, second = sink.wait_for(2)
    for receipt in (first, second):  # a retry carries them too, beside the signature
        assert receipt.headers["x-api-key"] == GATEWAY_KEY
        assert receipt.headers["x-tenant"] == "acme"
        assert receipt.verified_with == sink.secrets
    assert not sink.errors
    shown = relay.client.get(f"/v1/subscribers/{created['id']}", headers=relay.admin).json()
    assert shown["headers"] == {"X-Api-Key": "***cdef", "X-Tenant": "***"}
    listed = relay.client.get("/v1/subscribers", headers=relay.admin).json()["items"]
    assert listed[0]["headers"] == shown["headers"]

    changed = relay.client.patch(
        f"/v1/subscribers/{created['id']}",
        json={"headers": {"Authorization": "Bearer another-secret-value"}},
        headers=relay.admin,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["headers"] == {"Authorization": "***alue"}  # replaced as a whole
    relay.post_callback(relay.mint(), dict(EVOLINK_COMPLETED, id="task-2"))
    relay.wait_deliveries(2, "succeeded")
    third = sink.wait_for(3)[2]
    assert third.headers["authorization"] == "Bearer another-secret-value"
    assert "x-api-key" not in third.headers
    cleared = relay.client.patch(
        f"/v1/subscribers/{created['id']}", json={"headers": None}, headers=relay.admin
    )
    assert cleared.json()["headers"] is None

    time.sleep(0.2)
    logged = capfd.readouterr()
    assert "delivery_attempt" in logged.out  # the capture holds the relay's lines
    for secret in (GATEWAY_KEY, "another-secret-value"):
        assert secret not in logged.out and secret not in logged.err


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"headers": {"X-Key": "a\r\nX-Injected: 1"}}, "no line breaks"),
        ({"headers": {"X-Key": "a\nb"}}, "no line breaks"),
        ({"headers": {"X-Key": "nul\x00"}}, "no line breaks"),
        ({"headers": {"X-Key": "caf\u00e9"}}, "visible ASCII"),
        ({"headers": {"X-Key": "v" * 1025}}, "at most 1024"),
        ({"headers": {"X Key": "v"}}, "header name"),
        ({"headers": {"": "v"}}, "header name"),
        ({"headers": {"X-Key:": "v"}}, "header name"),
        ({"headers": {"webhook-signature": "v1,forged"}}, "set by the relay"),
        ({"headers": {"Webhook-Id": "evt_x"}}, "set by the relay"),
        ({"headers": {"webhook-timestamp": "1"}}, "set by the relay"),
        ({"headers": {"Content-Type": "text/plain"}}, "set by the relay"),
        ({"headers": {"content-length": "1"}}, "set by the relay"),
        ({"headers": {"Host": "internal.example"}}, "set by the relay"),
        ({"headers": {"Transfer-Encoding": "chunked"}}, "set by the relay"),
        ({"headers": {"Connection": "close"}}, "set by the relay"),
        ({"headers": {"Proxy-Anything": "x"}}, "set by the relay"),
        ({"headers": {"X-Key": "a", "x-key": "b"}}, "given twice"),
        ({"headers": {f"X-H{n}": "v" for n in range(11)}}, "at most 10"),
        ({"headers": {f"X-H{n}": "v" * 1000 for n in range(5)}}, "at most 4096"),
        ({"headers": {"X-Key": 5}}, "headers"),
        ({"headers": ["X-Key", "v"]}, "headers"),
        ({"max_per_second": 0}, "max_per_second"),
        ({"max_per_second": -1}, "max_per_second"),
        ({"max_per_second": 0.001}, "max_per_second"),
        ({"max_per_second": 1000.5}, "max_per_second"),
        ({"max_per_second": 1e308}, "max_per_second"),
        ({"max_per_second": "fast"}, "max_per_second"),
        ({"max_per_second": True}, "max_per_second"),
    ],
)
def test_bad_headers_and_rate_limits_are_refused(
    relay_server: RelayServer, body: dict[str, object], words: str
) -> None:
    created = relay_server.client.post(
        "/v1/subscribers",
        json={"url": "https://hooks.example.com/x", **body},
        headers=relay_server.admin,
    )
    assert created.status_code == 400, created.text
    error = created.json()["error"]
    assert error["code"] == "invalid_subscriber"
    assert words in error["message"]
    good = relay_server.add_subscriber("https://hooks.example.com/y")
    changed = relay_server.client.patch(
        f"/v1/subscribers/{good['id']}", json=body, headers=relay_server.admin
    )
    assert changed.status_code == 400 and changed.json()["error"]["code"] == "invalid_subscriber"
    assert (
        relay_server.client.get(f"/v1/subscribers/{good['id']}", headers=relay_server.admin).json()[
            "headers"
        ]
        is None
    )


def test_rate_limit_is_shown_and_can_be_removed(relay_server: RelayServer) -> None:
    created = relay_server.add_subscriber("https://hooks.example.com/x", max_per_second=20)
    assert created["max_per_second"] == 20
    changed = relay_server.client.patch(
        f"/v1/subscribers/{created['id']}",
        json={"max_per_second": None},
        headers=relay_server.admin,
    )
    assert changed.json()["max_per_second"] is None


def test_a_burst_reaches_a_rate_limited_subscriber_at_its_pace_without_delaying_others(
    relay_factory: Callable[..., RelayServer],
    subscriber_factory: Callable[..., SubscriberServer],
) -> None:
    """5,000 results of a batch job for a small service taking 40 a second, and meanwhile a
    few events for another subscriber: the small one sees 40 a second (never a burst), and
    the other gets each of its events at once, the small one's backlog notwithstanding."""
    rate = 40.0
    small = subscriber_factory()
    other = subscriber_factory()
    relay = relay_factory()
    register(relay, small, max_per_second=rate, event_types=["generation.succeeded"])
    register(relay, other, event_types=["generation.failed"])
    url = relay.mint(reusable=True)
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda n: relay.post_callback(url, dict(EVOLINK_COMPLETED, id=f"batch-{n}")),
                range(5000),
            )
        )
    assert all(answer.status_code == 200 for answer in answers)
    intake_seconds = time.time() - started

    # The other subscriber, while the small one's backlog waits: one event every 0.2 s.
    latencies = []
    for n in range(10):
        sent = time.time()
        failed = dict(EVOLINK_COMPLETED, id=f"other-{n}", status="failed", results=[])
        assert relay.post_callback(url, failed).status_code == 200
        receipt = other.wait_for(n + 1)[n]
        latencies.append(receipt.at - sent)
        time.sleep(0.2)

    intake_done = started + intake_seconds
    first = small.wait_for(1)[0].at
    time.sleep(max(0.0, intake_done + 5.0 - time.time()))
    times = sorted(r.at for r in small.receipts)
    assert not small.errors and not other.errors
    # 40 a second once the burst is in (5 s after the intake ended)...
    pace = sum(1 for t in times if intake_done <= t < intake_done + 5.0) / 5.0
    assert rate * 0.85 <= pace <= rate * 1.02, pace
    # ...and about that while 5,000 callbacks kept the relay busy (the worker's turns came
    # late at times, and a late turn is caught up on for 100 ms only).
    busy_pace = sum(1 for t in times if first + 1.0 <= t < intake_done) / (intake_done - first - 1)
    assert rate * 0.7 <= busy_pace <= rate * 1.02, busy_pace
    # Never a burst: the pacer starts at most rate x (1 s + its catch-up of a late start) + 1
    # in any one second (``service.pacing``), 45 here; 5 % more for the jitter of arrival
    # times (sink, relay and test share this process's GIL).
    busiest = max(sum(1 for later in times[i:] if later < t + 1.0) for i, t in enumerate(times))
    assert busiest <= rate * (1 + CATCH_UP_SECONDS + 0.05) + 1, busiest
    assert len(times) < 5000  # the backlog is still there: the pace is what held it back
    assert max(latencies) < 0.5, latencies
    print(
        f"small subscriber: {pace:.1f}/s ({busy_pace:.1f}/s during intake), busiest second"
        f" {busiest} (limit {rate:g});"
        f" other subscriber: slowest {max(latencies) * 1000:.0f} ms; intake {intake_seconds:.1f} s"
    )


def test_metrics_name_the_subscriber_that_is_down(
    relay_factory: Callable[..., RelayServer],
    subscriber_factory: Callable[..., SubscriberServer],
    database: dict[str, Any],
) -> None:
    """Attempts and failures by subscriber id, and failures in a row from the store: an alert
    on ``relay_subscriber_consecutive_failures`` names the one that is down. A removed
    subscriber's series go."""
    healthy = {"value": False}
    down_sink = subscriber_factory(script=lambda n: (204 if healthy["value"] else 503, 0.0))
    fine_sink = subscriber_factory()
    relay = relay_factory(retry_delays=(0.1, 0.1), **database)
    down = str(register(relay, down_sink)["id"])
    fine = str(register(relay, fine_sink)["id"])
    url = relay.mint(reusable=True)
    for n in range(2):
        relay.post_callback(url, dict(EVOLINK_COMPLETED, id=f"task-{n}"))
    relay.wait_deliveries(2, "failed")
    relay.wait_deliveries(2, "succeeded")

    def samples() -> dict[tuple[str, str], float]:
        text = relay.client.get("/metrics", headers=relay.admin).text
        return {
            (sample.name, sample.labels["subscriber"]): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if "subscriber" in sample.labels
        }

    seen = samples()
    assert seen[("relay_subscriber_attempts_total", down)] == 6  # 2 deliveries x 3 attempts
    assert seen[("relay_subscriber_failures_total", down)] == 6
    assert seen[("relay_subscriber_consecutive_failures", down)] == 6
    assert seen[("relay_subscriber_attempts_total", fine)] == 2
    assert seen[("relay_subscriber_failures_total", fine)] == 0
    assert seen[("relay_subscriber_consecutive_failures", fine)] == 0

    healthy["value"] = True
    replayed = relay.client.post(
        "/v1/deliveries/replay", json={"subscriber_id": down}, headers=relay.admin
    )
    assert replayed.status_code == 202, replayed.text
    relay.wait_deliveries(4, "succeeded")
    seen = samples()
    assert seen[("relay_subscriber_consecutive_failures", down)] == 0  # back up
    assert seen[("relay_subscriber_attempts_total", down)] == 8
    assert seen[("relay_subscriber_failures_total", down)] == 6

    assert relay.client.delete(f"/v1/subscribers/{down}", headers=relay.admin).status_code == 204
    seen = samples()
    assert not [key for key in seen if key[1] == down]  # its series are gone
    assert seen[("relay_subscriber_attempts_total", fine)] == 2


def test_console_sets_the_rate_limit_and_headers_and_shows_them_masked(
    relay_server: RelayServer,
) -> None:
    from tests.test_ops_console import browser, csrf_of, sign_in

    sub_id = relay_server.add_subscriber("http://127.0.0.1:9/hook")["id"]

    def state() -> dict[str, object]:
        answer = relay_server.client.get(f"/v1/subscribers/{sub_id}", headers=relay_server.admin)
        return answer.json()  # type: ignore[no-any-return]

    with browser(relay_server) as client:
        sign_in(client)
        csrf = csrf_of(client.get("/ops/subscribers").text)
        post = {"csrf": csrf, "back": "/ops/subscribers"}
        saved = client.post(
            f"/ops/subscribers/{sub_id}",
            data={**post, "action": "rate", "max_per_second": "12.5"},
        )
        assert saved.status_code == 303 and state()["max_per_second"] == 12.5
        client.post(
            f"/ops/subscribers/{sub_id}",
            data={
                **post,
                "action": "headers",
                "headers": f"X-Api-Key: {GATEWAY_KEY}\r\n\r\nX-Tenant: acme\r\n",
            },
        )
        assert state()["headers"] == {"X-Api-Key": "***cdef", "X-Tenant": "***"}
        page = client.get("/ops/subscribers").text
        assert "at most 12.5/s" in page and "X-Api-Key: ***cdef" in page
        assert GATEWAY_KEY not in page

        for bad in (
            {"action": "rate", "max_per_second": "fast"},
            {"action": "rate", "max_per_second": "0"},
            {"action": "headers", "headers": "no colon here"},
            {"action": "headers", "headers": "Webhook-Signature: v1,forged"},
        ):
            refused = client.post(f"/ops/subscribers/{sub_id}", data={**post, **bad})
            assert refused.status_code == 303
            assert "notice error" in client.get(refused.headers["location"]).text
        assert state()["max_per_second"] == 12.5
        assert state()["headers"] == {"X-Api-Key": "***cdef", "X-Tenant": "***"}

        client.post(f"/ops/subscribers/{sub_id}", data={**post, "action": "rate"})
        client.post(f"/ops/subscribers/{sub_id}", data={**post, "action": "headers"})
        assert (state()["max_per_second"], state()["headers"]) == (None, None)


def test_cli_sets_the_rate_limit_and_headers_and_shows_them_masked(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        RELAY_DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}",
        RELAY_ALLOW_PRIVATE_TARGETS="true",
    )

    def relay(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    added = relay(
        "subscribers", "add", "http://127.0.0.1:9/hook",
        "--max-per-second", "20", "--header", f"X-Api-Key: {GATEWAY_KEY}",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    sub_id = added.stdout.split()[1]
    listed = relay("subscribers", "list")
    assert "20/s, X-Api-Key: ***cdef" in listed.stdout
    changed = relay("subscribers", "set", sub_id, "--no-rate-limit", "--header", "X-Tenant: a")
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.strip() == f"{sub_id}: no limit, X-Tenant: ***"
    for bad in (
        ("--header", "Webhook-Signature: v1,forged"),
        ("--header", "no colon"),
        ("--max-per-second", "0"),
        (),
    ):
        refused = relay("subscribers", "set", sub_id, *bad)
        assert refused.returncode != 0 and refused.stderr, bad
    assert relay("subscribers", "set", "sub_nope", "--no-headers").returncode == 2
    cleared = relay("subscribers", "set", sub_id, "--no-headers")
    assert cleared.stdout.strip() == f"{sub_id}: no limit"
    everything = added.stdout + listed.stdout + changed.stdout + added.stderr + listed.stderr
    assert GATEWAY_KEY not in everything
