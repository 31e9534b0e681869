"""W3C Trace Context from callback to delivery: ``traceparent`` in, through the store, and out.

The relay starts a trace at each callback, or continues the provider's when it sent a valid
``traceparent``: the callback gets a span id of its own (the callback's span), and that context
is stored with the event as the CloudEvents Distributed Tracing extension (``traceparent``,
``tracestate``; ``service.events``). An event no callback brought (a watch's poll, a relay-made
failure, a released suspect callback) starts a new trace where it is stored. Each delivery
attempt is a child span of the event's: a new span id, sent as the ``traceparent`` header
(``tracestate`` passed on), so the subscriber's own spans join the trace. The context lives in
the stored event, so it survives restarts, and a delivery attempted by another replica or a
``relay worker`` still joins it.

The delivered body keeps the extension as stored: per the CloudEvents extension it is the
context in which the event was created and stays the same on every hop, while the header names
the hop (the attempt). So the stored body is delivered byte for byte, never rewritten.

``Tracer`` (this module) only carries headers: ids come from ``os.urandom``, nothing is
recorded, no OpenTelemetry is imported, which keeps the callback path's cost to looking for
two headers, parsing one and drawing an id or two. The parser is written here, rather than
taken from OpenTelemetry, so that this works without the optional ``otel`` extra. With the
extra and the standard ``OTEL_*`` variables, ``configure`` returns ``service.tracing_otel``'s
tracer instead, which records the same spans and exports them to an OTLP collector.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
import structlog

if TYPE_CHECKING:
    from service.store.records import Claim

log = structlog.get_logger("service.tracing")

#: Level 1's ``traceparent``: version, trace-id, parent-id, flags (lowercase hex), and for a
#: version above 00 whatever a later level appends after a dash.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
#: Longest ``traceparent`` looked at: version 00 is 55 characters; a later version may add
#: fields, but nothing of a few hundred characters is worth parsing.
MAX_TRACEPARENT = 512

#: One ``tracestate`` list-member: a simple or multi-tenant key, ``=``, a value of printable
#: ASCII but ``,`` and ``=`` that does not end in a space.
_MEMBER = re.compile(
    r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
#: What the relay passes on of ``tracestate``: more is dropped whole (the spec allows it).
MAX_TRACESTATE = 512
MAX_TRACESTATE_MEMBERS = 32

#: A trace the relay starts itself is sampled: it is the trace's root, and saying "sampled"
#: lets a subscriber's parent-based sampler record its part (the relay keeps its own part in
#: the store: the event and its attempts). With OpenTelemetry, the configured sampler decides.
SAMPLED = 0x01


# Built for every callback, so not frozen (a frozen dataclass costs several times as much to
# build); nothing changes one once built.
@dataclass(slots=True)
class TraceContext:
    """A span's context as it travels: ids in lowercase hex, the sampled flag, ``tracestate``."""

    trace_id: str
    span_id: str
    flags: int = SAMPLED
    tracestate: str | None = None

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    def child(self) -> TraceContext:
        """A new span of the same trace (its parent is this one)."""
        return TraceContext(self.trace_id, new_span_id(), self.flags, self.tracestate)

    def headers(self) -> dict[str, str]:
        """``traceparent`` and, when there is one, ``tracestate``."""
        if self.tracestate is None:
            return {"traceparent": self.traceparent}
        return {"traceparent": self.traceparent, "tracestate": self.tracestate}


def new_span_id() -> str:
    """8 random bytes in hex, never all zeros (which means "no span")."""
    while (value := os.urandom(8).hex()) == _ZERO_SPAN:  # pragma: no cover (2**-64)
        pass
    return value


def new_trace() -> TraceContext:
    """The root span of a new trace, sampled: a trace id and a span id from one draw of 24
    random bytes (one system call, on the callback path), neither all zeros."""
    ids = os.urandom(24).hex()
    trace_id, span_id = ids[:32], ids[32:]
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:  # pragma: no cover (2**-64)
        return new_trace()
    return TraceContext(trace_id, span_id)


def parse_traceparent(value: str | None) -> TraceContext | None:
    """``traceparent`` per W3C Trace Context Level 1, strictly; None when absent or invalid
    (the caller then starts a new trace).

    Version 00 is exactly ``00-<32 hex>-<16 hex>-<2 hex>`` in lowercase, with neither id all
    zeros. Version ff is invalid; a later version (01 to fe) is read as far as Level 1 knows
    it, as the spec asks (at least 55 characters, a dash after the flags if it goes on). Of
    the flags only ``sampled`` is kept: Level 1 asks to pass the others on as zero.
    """
    if value is None or len(value) > MAX_TRACEPARENT:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, int(flags, 16) & SAMPLED)


def clean_tracestate(values: Iterable[str]) -> str | None:
    """The ``tracestate`` to pass on (its header lines joined, members separated by ``,``),
    or None when there is none or it is invalid: a malformed member, a key twice, more than
    32 members or more than 512 characters. Empty members are left out, as the spec allows.
    """
    joined = ",".join(values)
    if not joined or len(joined) > MAX_TRACESTATE:
        return None
    members: list[str] = []
    keys: set[str] = set()
    for part in joined.split(","):
        member = part.strip(" \t")
        if not member:
            continue
        if _MEMBER.fullmatch(member) is None:
            return None
        key = member.partition("=")[0]
        if key in keys:
            return None
        keys.add(key)
        members.append(member)
    if not members or len(members) > MAX_TRACESTATE_MEMBERS:
        return None
    return ",".join(members)


def incoming_context(headers: Iterable[tuple[bytes, bytes]]) -> TraceContext | None:
    """The caller's context from raw ASGI headers (names in lowercase), or None.

    One ``traceparent`` only: two are ambiguous, so invalid. ``tracestate`` is read only
    with a valid ``traceparent``, as the spec asks.
    """
    parents: list[bytes] = []
    states: list[bytes] = []
    for name, value in headers:
        if name == b"traceparent":
            parents.append(value)
        elif name == b"tracestate":
            states.append(value)
    if len(parents) != 1:
        return None
    parent = parse_traceparent(parents[0].decode("latin-1"))
    if parent is None or not states:
        return parent
    state = clean_tracestate(value.decode("latin-1") for value in states)
    return TraceContext(parent.trace_id, parent.span_id, parent.flags, state)


def event_context(body: str) -> TraceContext | None:
    """The context stored with an event (its ``traceparent`` and ``tracestate`` attributes),
    read from the CloudEvent's JSON without parsing its data; None for an event stored
    without one.

    ``service.events.build_cloudevent`` writes ``data`` last and every attribute before it is
    a string, so the attributes are the text before the first ``"data":`` (a JSON string
    cannot hold that sequence unescaped). ``data.raw`` is the provider's payload and may name
    a ``traceparent`` of its own: it is never read.
    """
    end = body.find(',"data":')
    if end < 0:
        return None
    attributes = body[:end]
    start = attributes.find('"traceparent":"')
    if start < 0:
        return None
    start += len('"traceparent":"')
    if attributes[start + 55 : start + 56] != '"':  # the relay writes version 00 only
        return None
    parent = parse_traceparent(attributes[start : start + 55])
    if parent is None:
        return None
    state_at = attributes.find('"tracestate":"')
    if state_at < 0:
        return parent
    # A tracestate may hold ``"`` and ``\`` (JSON-escaped here): decoded as the JSON it is.
    try:
        state = orjson.loads("{" + attributes[state_at:] + "}").get("tracestate")
    except orjson.JSONDecodeError:
        return parent
    tracestate = clean_tracestate([state]) if isinstance(state, str) else None
    return TraceContext(parent.trace_id, parent.span_id, parent.flags, tracestate)


class Span:
    """A span the relay started: ``context`` is what travels. This one records nothing
    (``Tracer``); ``service.tracing_otel`` subclasses it to record and export."""

    __slots__ = ("context",)

    def __init__(self, context: TraceContext) -> None:
        self.context = context

    def set(self, **attributes: str | int | None) -> None:
        """Attributes learnt along the way (the outcome, the event id, ...)."""

    def end(self, status_code: int | None, error: str | None = None) -> None:
        """The span is over: the HTTP status answered or received, or what failed."""


class Tracer:
    """Starts the relay's spans; this one only makes ids and carries them (no extra needed)."""

    def callback(self, provider: str, headers: Iterable[tuple[bytes, bytes]]) -> Span:
        """A callback arrived: its span continues the caller's trace, or starts one."""
        parent = incoming_context(headers)
        if parent is None:
            return Span(new_trace())
        return Span(parent.child())

    def event(self, provider: str, task_id: str) -> Span:
        """An event no callback brought (a poll, a relay-made failure): a new trace."""
        return Span(new_trace())

    def attempt(self, claim: Claim) -> Span:
        """A delivery attempt: a child of the event's span (a new trace for an event stored
        before the relay traced, or without a context)."""
        parent = event_context(claim.body)
        if parent is None:
            return Span(new_trace())
        return Span(parent.child())

    async def aclose(self) -> None:
        """Send what is left (``service.tracing_otel``); nothing to do here."""


#: The tracer of a relay that exports nothing.
HEADERS_ONLY = Tracer()


def _wanted(environ: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` variables ask for spans to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(environ: Mapping[str, str] | None = None) -> Tracer:
    """The tracer ``relay serve`` and ``relay worker`` use, from the standard ``OTEL_*``.

    Spans are exported only when the variables ask for it (``OTEL_TRACES_EXPORTER=otlp`` or an
    ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``; not with ``OTEL_SDK_DISABLED=true`` or
    ``OTEL_TRACES_EXPORTER=none``) and the ``otel`` extra is installed; asked for without it,
    one warning says so. The headers flow either way.
    """
    environ = os.environ if environ is None else environ
    if not _wanted(environ):
        return HEADERS_ONLY
    try:
        from service.tracing_otel import from_environment
    except ImportError:
        log.warning(
            "tracing_not_installed",
            hint="OTEL_* asks for spans but OpenTelemetry is not installed:"
            " pip install 'callback-relay[otel]' (trace headers flow without it)",
        )
        return HEADERS_ONLY
    return from_environment(environ) or HEADERS_ONLY
