"""W3C trace context from callback to delivery, without OpenTelemetry (the default path).

The parser against hostile input, the context stored with the event and read back, and a real
relay carrying ``traceparent`` from a provider's callback to a real subscriber, attempt by
attempt. ``tests/test_tracing_otel.py`` checks the spans the ``otel`` extra exports.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from service import tracing
from service.events import Normalized, build_cloudevent, dumps
from service.tracing import (
    HEADERS_ONLY,
    TraceContext,
    clean_tracestate,
    event_context,
    incoming_context,
    parse_traceparent,
)
from tests.conftest import EVOLINK_COMPLETED, RelayServer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"


# -- traceparent ----------------------------------------------------------------------------


def test_valid_traceparent_is_read() -> None:
    assert parse_traceparent(VALID) == TraceContext(TRACE, PARENT, 0x01)
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-00") == TraceContext(TRACE, PARENT, 0x00)


def test_unknown_flags_are_passed_on_as_zero() -> None:
    """Level 1 knows one flag (sampled); the others go on as zero."""
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-ff") == TraceContext(TRACE, PARENT, 0x01)
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-fe") == TraceContext(TRACE, PARENT, 0x00)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00",
        VALID.upper(),  # lowercase hex only
        f"00-{TRACE.upper()}-{PARENT}-01",
        f"00-{TRACE}-{PARENT.upper()}-01",
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace-id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent-id
        f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has no more fields
        f"00-{TRACE}-{PARENT}-01-",
        f"00-{TRACE}-{PARENT}-1",
        f"00-{TRACE}-{PARENT}-001",
        f"00-{TRACE[:-1]}-{PARENT}-01",
        f"00-{TRACE}0-{PARENT}-01",
        f"00-{TRACE}-{PARENT[:-1]}g-01",
        f"00_{TRACE}_{PARENT}_01",
        f" {VALID}",
        f"{VALID}\n",
        f"00-{TRACE}-{PARENT}-0x",
        f"0-0{TRACE}-{PARENT}-01",
        f"00-{TRACE[:8]}_{TRACE[9:]}-{PARENT}-01",  # int(..., 16) would take an underscore
        f"00-+{TRACE[1:]}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-01" + "-x" * 300,  # far too long
        "00-" + "é" * 32 + f"-{PARENT}-01",
        f"0g-{TRACE}-{PARENT}-01",
        f"01-{TRACE}-{PARENT}-01x",  # a later version goes on only after a dash
        f"01-{TRACE}-{PARENT}",  # shorter than 55 characters
    ],
)
def test_invalid_traceparent_is_refused(value: str) -> None:
    assert parse_traceparent(value) is None


def test_later_version_is_read_as_far_as_level_1_knows_it() -> None:
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-01") == TraceContext(TRACE, PARENT, 0x01)
    assert parse_traceparent(f"cc-{TRACE}-{PARENT}-01-what-the-future-has-in-store") == (
        TraceContext(TRACE, PARENT, 0x01)
    )


# -- tracestate -----------------------------------------------------------------------------


def test_tracestate_members_are_kept_in_order() -> None:
    assert clean_tracestate(["rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE"]) == (
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    )
    # Several header lines are one list; empty members are left out.
    assert clean_tracestate(["a=1,,", " b=2", "tenant@system=x y"]) == "a=1,b=2,tenant@system=x y"
    # A value may hold quotes and backslashes (printable ASCII but "," and "=").
    assert clean_tracestate(['vendor=say"hi"\\']) == 'vendor=say"hi"\\'


@pytest.mark.parametrize(
    "values",
    [
        [],
        [""],
        [" , "],
        ["Upper=1"],  # keys are lowercase
        ["a=1,a=2"],  # a key twice
        ["a=1=2"],
        ["a="],  # an empty value
        ["a=é"],
        ["a=\x00"],
        ["a=1\r\nx-injected: 1"],  # passed on as a header: no line break may get through
        ["no-equals"],
        ["=1"],
        ["1abc=1"],  # a simple key starts with a letter
        ["t@" + "s" * 15 + "=1"],  # a system-id has at most 14 characters
        ["k" * 257 + "=1"],
        [",".join(f"k{n}=v" for n in range(33))],  # more than 32 members
        ["k=" + "v" * 255 + ",l=" + "v" * 255],  # more than 512 characters
    ],
)
def test_invalid_tracestate_is_dropped_whole(values: list[str]) -> None:
    assert clean_tracestate(values) is None


def test_tracestate_at_its_bounds_is_kept() -> None:
    members = ",".join(f"k{n}=v" for n in range(32))
    assert clean_tracestate([members]) == members
    longest = "k=" + "v" * 256  # a value of 256 characters
    assert clean_tracestate([longest]) == longest


# -- headers --------------------------------------------------------------------------------


def test_incoming_context_reads_the_headers() -> None:
    headers = [(b"content-type", b"application/json"), (b"traceparent", VALID.encode())]
    assert incoming_context(headers) == TraceContext(TRACE, PARENT, 0x01)
    headers.append((b"tracestate", b"rojo=1"))
    headers.append((b"tracestate", b"congo=2"))
    assert incoming_context(headers) == TraceContext(TRACE, PARENT, 0x01, "rojo=1,congo=2")


def test_two_traceparents_or_none_start_a_new_trace() -> None:
    twice = [(b"traceparent", VALID.encode()), (b"traceparent", VALID.encode())]
    assert incoming_context(twice) is None
    # tracestate alone (or with an invalid traceparent) is not read.
    assert incoming_context([(b"tracestate", b"rojo=1")]) is None
    assert incoming_context([(b"traceparent", b"junk"), (b"tracestate", b"rojo=1")]) is None
    # Not latin-1 text a client could send: refused, never an error.
    assert incoming_context([(b"traceparent", b"\xff" * 55)]) is None


def test_a_callback_span_is_a_child_of_the_caller() -> None:
    span = HEADERS_ONLY.callback("evolink", [(b"traceparent", VALID.encode())])
    assert span.context.trace_id == TRACE
    assert span.context.span_id not in (PARENT, "0" * 16)
    assert span.context.flags == 0x01
    fresh = HEADERS_ONLY.callback("evolink", [(b"traceparent", VALID.upper().encode())])
    assert fresh.context.trace_id != TRACE
    assert parse_traceparent(fresh.context.traceparent) == fresh.context


# -- the context stored with the event --------------------------------------------------------


def _event_body(trace: TraceContext | None, raw: Any) -> str:
    normalized = Normalized(task_id="t-1", status="running")
    event = build_cloudevent(
        event_id="evt_1",
        provider="evolink",
        normalized=normalized,
        received_at=0.0,
        metadata={"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"},
        raw=raw,
        trace=trace,
    )
    return dumps(event)


def test_event_context_reads_the_extension_back() -> None:
    context = TraceContext(TRACE, PARENT, 0x01, 'rojo=1,vendor=say"hi"\\')
    body = _event_body(context, {"x": 1})
    event = orjson.loads(body)
    assert event["traceparent"] == VALID
    assert event["tracestate"] == 'rojo=1,vendor=say"hi"\\'
    assert event_context(body) == context
    # Without tracestate:
    assert event_context(_event_body(TraceContext(TRACE, PARENT), None)) == TraceContext(
        TRACE, PARENT
    )


def test_event_context_never_reads_the_providers_payload() -> None:
    """``data.raw`` (and metadata) may name a traceparent: an event stored without one (before
    the relay traced) has none, whatever its payload says."""
    hostile = {"traceparent": VALID, "tracestate": "evil=1"}
    assert event_context(_event_body(None, hostile)) is None
    own = TraceContext("a" * 32, "b" * 16)
    assert event_context(_event_body(own, hostile)) == own
    assert event_context("") is None
    assert event_context('{"traceparent":"00-broken","data":{}}') is None
    assert event_context('{"traceparent":"' + VALID + 'more","data":{}}') is None
    # A tracestate that is no longer valid is left out; the traceparent stands.
    assert event_context(
        '{"traceparent":"' + VALID + '","tracestate":"a=1,a=2","data":{}}'
    ) == TraceContext(TRACE, PARENT, 0x01)


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_SERVICE_NAME": "relay"},  # names the service, asks for no export
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
    ],
)
def test_no_export_unless_asked(environ: dict[str, str]) -> None:
    with capture_logs() as logs:
        assert tracing.configure(environ) is HEADERS_ONLY
    assert logs == []


def test_asked_for_without_the_extra_says_so_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """``OTEL_*`` set but OpenTelemetry not installed: one warning, headers only."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # what "not installed" looks like
    monkeypatch.delitem(sys.modules, "service.tracing_otel", raising=False)
    with capture_logs() as logs:
        tracer = tracing.configure({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert tracer is HEADERS_ONLY
    assert [(line["event"], line["log_level"]) for line in logs] == [
        ("tracing_not_installed", "warning")
    ]


def test_another_exporter_or_protocol_says_so() -> None:
    pytest.importorskip("opentelemetry.sdk")
    for environ in (
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        },
    ):
        with capture_logs() as logs:
            assert tracing.configure(environ) is HEADERS_ONLY
        assert [line["event"] for line in logs] == ["tracing_not_supported"]


# -- through a real relay ---------------------------------------------------------------------


def _parts(traceparent: str) -> tuple[str, str, str]:
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00" and parse_traceparent(traceparent) is not None
    return trace_id, span_id, flags


def test_provider_trace_reaches_the_subscriber(relay_server: RelayServer, sink: Any) -> None:
    """The provider's trace continues: the event stores the callback's span, and each attempt
    (a failure, then its retry) sends a span of its own, a child of it, with tracestate."""
    answers = iter([(500, 0.0), (204, 0.0)])
    sink.script = lambda n: next(answers)
    relay_server.add_subscriber(sink.url)
    url = relay_server.mint()
    response = relay_server.post_callback(
        url,
        EVOLINK_COMPLETED,
        headers={"traceparent": VALID, "tracestate": "rojo=00f067aa0ba902b7"},
    )
    assert response.status_code == 200
    (event,) = relay_server.events()
    trace_id, callback_span, flags = _parts(event["traceparent"])
    assert (trace_id, flags) == (TRACE, "01")
    assert callback_span != PARENT  # the relay's own span, a child of the provider's
    assert event["tracestate"] == "rojo=00f067aa0ba902b7"
    receipts = sink.wait_for(2, timeout=15)
    spans = []
    for receipt in receipts:
        trace_id, attempt_span, flags = _parts(receipt.headers["traceparent"])
        assert (trace_id, flags) == (TRACE, "01")
        assert receipt.headers["tracestate"] == "rojo=00f067aa0ba902b7"
        # The delivered body is the stored event: its extension names the callback's span.
        assert orjson.loads(receipt.body)["traceparent"] == event["traceparent"]
        spans.append(attempt_span)
    assert len({*spans, callback_span, PARENT}) == 4  # a new span per attempt


def test_without_a_traceparent_the_relay_starts_the_trace(
    relay_server: RelayServer, sink: Any
) -> None:
    """No (or an invalid) traceparent: a new trace starts at the callback, sampled, and its
    deliveries join it; an invalid tracestate is not passed on."""
    relay_server.add_subscriber(sink.url)
    relay_server.post_callback(relay_server.mint(), EVOLINK_COMPLETED)
    running = copy.deepcopy(EVOLINK_COMPLETED)
    running.update(id="task-2", status="processing", progress=40)
    response = relay_server.post_callback(
        relay_server.mint(),
        running,
        headers={"traceparent": VALID.upper(), "tracestate": "rojo=1"},
    )
    assert response.status_code == 200
    receipts = sink.wait_for(2, timeout=15)
    assert len(receipts) == 2
    events = {event["id"]: event for event in relay_server.events()}
    for receipt in receipts:
        event = events[receipt.event_id]
        assert "tracestate" not in event and "tracestate" not in receipt.headers
        event_trace, event_span, flags = _parts(event["traceparent"])
        assert event_trace != TRACE and flags == "01"
        trace_id, attempt_span, _ = _parts(receipt.headers["traceparent"])
        assert trace_id == event_trace and attempt_span != event_span


def test_an_event_no_callback_brought_starts_a_trace(relay_server: RelayServer) -> None:
    """A poll's event (``Relay.accept`` without a callback's span) starts a trace of its own."""
    relay = relay_server.relay

    async def accept(task_id: str) -> str:
        normalized = Normalized(task_id=task_id, status="running")
        result = await relay.accept("reve", normalized, raw={"a": 1}, raw_body=b'{"a":1}')
        return result.event_id

    first, second = relay_server.in_loop(accept("reve-1")), relay_server.in_loop(accept("reve-2"))
    events = {event["id"]: event for event in relay_server.events()}
    traces = set()
    for event_id in (first, second):
        event = events[event_id]
        trace_id, _, flags = _parts(event["traceparent"])
        assert flags == "01" and "tracestate" not in event
        traces.add(trace_id)
    assert len(traces) == 2
