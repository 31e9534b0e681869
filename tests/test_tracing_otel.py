"""Spans exported over OTLP/HTTP (the ``otel`` extra), checked at a loopback receiver.

Real relay processes configured by the standard ``OTEL_*`` variables only: ``relay serve
--no-worker`` receives the callbacks and ``relay worker``, another process, delivers them, so
the attempts' parent comes from the stored event, never from memory. The receiver decodes what
a collector would get (``tests.otlp_receiver``).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import EVOLINK_COMPLETED, bound_socket
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.relay_process import RelayProcess
from tests.subscriber_server import SubscriberServer
from tests.test_store_contract import fresh_schema

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as server:
        yield server


def _free_port() -> int:
    sock = bound_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def _named(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.name == name]


@pytest.mark.postgres
def test_spans_link_callback_attempts_and_subscriber(
    tmp_path: Path, pg_url: str, receiver: OtlpReceiver
) -> None:
    """The provider's span -> ``callback evolink`` (server, API process) -> one ``POST`` per
    attempt (client, worker process) -> the subscriber's traceparent; no token anywhere."""
    sink = SubscriberServer().start()
    answers = iter([(500, 0.0), (204, 0.0)])
    sink.script = lambda n: next(answers, (204, 0.0))
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "relay-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    api = RelayProcess(tmp_path, _free_port(), "--no-worker", RELAY_DATABASE_URL=pg_url, **otel)
    worker = None
    try:
        api.start()
        answer = httpx.post(
            f"{api.base}/v1/subscribers", json={"url": sink.url}, headers=api.admin
        ).json()
        sink.secrets.append(answer["secret"])
        url = httpx.post(
            f"{api.base}/v1/callback-urls", json={"provider": "evolink"}, headers=api.admin
        ).json()["url"]
        token = url.rsplit("/", 1)[1]
        response = httpx.post(
            url,
            json=EVOLINK_COMPLETED,
            headers={"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "rojo=1"},
        )
        assert response.status_code == 200
        # A callback with no traceparent is the root of a trace of its own.
        other = httpx.post(
            f"{api.base}/v1/callback-urls", json={"provider": "evolink"}, headers=api.admin
        ).json()["url"]
        running = copy.deepcopy(EVOLINK_COMPLETED)
        running.update(id="task-2", status="processing", progress=40)
        assert httpx.post(other, json=running).status_code == 200
        # A refused callback (a forged token) is a span too, without the token.
        forged = httpx.post(url[: -len(token)] + "forged-" + token[7:], json=running)
        assert forged.status_code == 401

        worker = subprocess.Popen(
            [sys.executable, "-m", "service", "worker"],
            env=api.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        receipts = sink.wait_for(3, timeout=30)  # the first event twice (500, retry), the other
        spans = receiver.wait_for(
            lambda spans: (
                len(_named(spans, "callback evolink")) >= 3 and len(_named(spans, "POST")) >= 3
            )
        )
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        api.stop()
        sink.stop()

    callbacks = {
        span.attributes.get("callback_relay.event_id"): span
        for span in _named(spans, "callback evolink")
    }
    first = response.json()["event_id"]
    callback = callbacks[first]
    assert callback.kind == "SPAN_KIND_SERVER"
    assert (callback.trace_id, callback.parent_span_id) == (TRACE, PARENT)
    assert callback.attributes["http.response.status_code"] == 200
    assert callback.attributes["http.route"] == "/callbacks/{provider}/{token}"
    assert callback.attributes["callback_relay.outcome"] == "accepted"
    assert callback.resource["service.name"] == "relay-under-test"

    root = callbacks[next(iter(set(callbacks) - {first, None}))]
    assert root.parent_span_id == "" and root.trace_id != TRACE

    (refused,) = [
        s for s in _named(spans, "callback evolink") if s is not callback and s is not root
    ]
    assert refused.attributes["http.response.status_code"] == 401
    assert refused.status == "STATUS_CODE_UNSET"  # a client's error, not the server's

    attempts = {span.span_id: span for span in _named(spans, "POST")}
    for receipt in receipts:
        _, trace_id, span_id, _ = receipt.headers["traceparent"].split("-")
        attempt = attempts[span_id]  # the subscriber's parent is the attempt's span
        assert attempt.kind == "SPAN_KIND_CLIENT"
        assert attempt.trace_id == trace_id
        assert attempt.attributes["callback_relay.event_id"] == receipt.event_id
        assert attempt.attributes["http.response.status_code"] == receipt.status
        assert attempt.attributes["server.address"] == "127.0.0.1"
        if receipt.event_id == first:
            assert attempt.parent_span_id == callback.span_id
            assert receipt.headers["tracestate"] == "rojo=1"
        else:
            assert attempt.parent_span_id == root.span_id
    failed = [a for a in attempts.values() if a.attributes["http.response.status_code"] == 500]
    assert len(failed) == 1
    assert failed[0].status == "STATUS_CODE_ERROR"
    assert failed[0].attributes["error.type"] == "500"
    assert _named(spans, "callback evolink")[0].resource == callback.resource
    # Only callbacks and attempts are traced (the admin requests are not), and the callback
    # URL's token is in no span, attribute or resource.
    assert {span.name for span in spans} == {"callback evolink", "POST"}
    for body in receiver.bodies:
        assert token.encode() not in body and token[7:].encode() not in body
        assert b"/callbacks/evolink/" not in body


def test_a_polled_event_is_the_root_of_its_trace(
    tmp_path: Path, receiver: OtlpReceiver, emulator: Any
) -> None:
    """An event no callback brought (a watch's poll) starts a trace: ``event <provider>``,
    whose attempts are its children. (One process, on SQLite.)"""
    sink = SubscriberServer().start()
    task_id = emulator.add_task("reve-art", timeline=((0.0, "succeeded"),))
    api = RelayProcess(
        tmp_path,
        _free_port(),
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
        RELAY_REVE_ART_BASE_URL=emulator.url,
        RELAY_REVE_ART_API_KEY=emulator.keys["reve-art"],
    )
    try:
        api.start()
        httpx.post(f"{api.base}/v1/subscribers", json={"url": sink.url}, headers=api.admin)
        watch = httpx.post(
            f"{api.base}/v1/watches",
            json={"provider": "reve-art", "task_id": task_id},
            headers=api.admin,
        )
        assert watch.status_code == 201, watch.text
        (receipt,) = sink.wait_for(1, timeout=30)
        spans = receiver.wait_for(lambda spans: len(_named(spans, "POST")) >= 1)
    finally:
        api.stop()
        sink.stop()
    (event,) = _named(spans, "event reve-art")
    assert event.parent_span_id == "" and event.kind == "SPAN_KIND_INTERNAL"
    assert event.attributes["callback_relay.event_id"] == receipt.event_id
    (attempt,) = _named(spans, "POST")
    assert attempt.parent_span_id == event.span_id and attempt.trace_id == event.trace_id
    assert receipt.headers["traceparent"] == f"00-{event.trace_id}-{attempt.span_id}-01"
