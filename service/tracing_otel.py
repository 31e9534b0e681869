"""The relay's spans recorded with OpenTelemetry and exported over OTLP/HTTP (the ``otel`` extra).

Imported only by ``service.tracing.configure``, when the ``OTEL_*`` variables ask for spans
and the extra is installed. The same contexts travel as without it (``service.tracing``); the
ids now come from OpenTelemetry's spans, whose sampler (``OTEL_TRACES_SAMPLER``) sets the
``sampled`` flag. Spans:

- ``callback <provider>`` (server): one callback request, a child of the provider's span when it
  sent a ``traceparent``. Its attributes name the route's template, never the path: the path
  holds the callback URL's secret token.
- ``event <provider>`` (internal): an event no callback brought (a poll, a relay-made failure),
  the root of a new trace.
- ``POST`` (client): one delivery attempt, a child of its event's span, however long after and
  in whichever process it runs (the parent comes from the stored event). The subscriber's URL
  is not recorded whole (it may hold a token of its own): only scheme, host and port.

OpenTelemetry reads its own settings from the environment: ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``... Spans are exported by a
batch processor on a thread of its own: the event loop never waits on the collector.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from service import __version__
from service.store.records import Claim
from service.tracing import Span, TraceContext, Tracer, event_context, incoming_context

log = structlog.get_logger("service.tracing")

#: The callback routes' templates (``http.route``): the path itself holds a secret token.
CALLBACK_ROUTE = "/callbacks/{provider}/{token}"


def _parent(context: TraceContext | None) -> Context | None:
    """An OpenTelemetry parent for a context that came from elsewhere (a header, the store)."""
    if context is None:
        return None
    state = TraceState.from_header([context.tracestate]) if context.tracestate else None
    remote = SpanContext(
        trace_id=int(context.trace_id, 16),
        span_id=int(context.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(context.flags),
        trace_state=state,
    )
    return trace.set_span_in_context(NonRecordingSpan(remote))


def _traveling(span: trace.Span, tracestate: str | None) -> TraceContext:
    """What goes on of ``span``: its ids, the sampler's flag, the ``tracestate`` received."""
    ids = span.get_span_context()
    return TraceContext(
        format(ids.trace_id, "032x"), format(ids.span_id, "016x"), ids.trace_flags, tracestate
    )


class OtelSpan(Span):
    """A ``service.tracing.Span`` recorded by OpenTelemetry."""

    __slots__ = ("_client", "_span")

    def __init__(self, span: trace.Span, tracestate: str | None, *, client: bool) -> None:
        super().__init__(_traveling(span, tracestate))
        self._span = span
        self._client = client

    def set(self, **attributes: str | int | None) -> None:
        self._span.set_attributes(
            {f"callback_relay.{k}": v for k, v in attributes.items() if v is not None}
        )

    def end(self, status_code: int | None, error: str | None = None) -> None:
        span = self._span
        if status_code is not None:
            span.set_attribute("http.response.status_code", status_code)
        # A server's 4xx is the client's error, not the server's (its code is an attribute);
        # an attempt fails on any answer but 2xx, as the relay counts it (no redirect is
        # followed). No status: ``error`` says what failed.
        if status_code is None:
            failed = error is not None
        elif self._client:
            failed = not 200 <= status_code < 300
        else:
            failed = status_code >= 500
        if failed:
            # error.type: low-cardinality, so the failure's kind, never its details.
            kind = str(status_code) if status_code is not None else error or "error"
            span.set_attribute("error.type", kind.split(":", 1)[0])
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()


class OtelTracer(Tracer):
    """Starts the relay's spans on its own ``TracerProvider`` (no global one is set: several
    relays in one process each export their own) and shuts it down with the relay."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("callback-relay", __version__)

    def callback(self, provider: str, headers: Iterable[tuple[bytes, bytes]]) -> Span:
        incoming = incoming_context(headers)
        span = self.tracer.start_span(
            f"callback {provider}",
            context=_parent(incoming),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "POST",
                "http.route": CALLBACK_ROUTE,
                "callback_relay.provider": provider,
            },
        )
        return OtelSpan(span, incoming.tracestate if incoming else None, client=False)

    def event(self, provider: str, task_id: str) -> Span:
        span = self.tracer.start_span(
            f"event {provider}",
            context=None,
            kind=SpanKind.INTERNAL,
            attributes={"callback_relay.provider": provider, "callback_relay.task_id": task_id},
        )
        return OtelSpan(span, None, client=False)

    def attempt(self, claim: Claim) -> Span:
        stored = event_context(claim.body)
        attributes: dict[str, str | int] = {
            "http.request.method": "POST",
            "callback_relay.delivery_id": claim.delivery_id,
            "callback_relay.event_id": claim.event_id,
            "callback_relay.subscriber_id": claim.subscriber_id,
            "callback_relay.trigger": claim.trigger,
        }
        if claim.cycle_attempts:
            attributes["http.request.resend_count"] = claim.cycle_attempts
        try:
            url = urlsplit(claim.url)
            attributes["url.scheme"] = url.scheme
            attributes["server.address"] = url.hostname or ""
            attributes["server.port"] = url.port or (443 if url.scheme == "https" else 80)
        except ValueError:  # the attempt says what is wrong with it
            pass
        span = self.tracer.start_span(
            "POST", context=_parent(stored), kind=SpanKind.CLIENT, attributes=attributes
        )
        return OtelSpan(span, stored.tracestate if stored else None, client=True)

    async def aclose(self) -> None:
        """Export what is left and stop (bounded by the exporter's timeout), off the loop."""
        await asyncio.to_thread(self.provider.shutdown)


def from_environment(environ: Mapping[str, str]) -> Tracer | None:
    """The OTLP/HTTP tracer the ``OTEL_*`` variables describe, or None (said in a warning)
    when they ask for what this extra does not do: another exporter or protocol."""
    exporter = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if exporter != "otlp" or protocol != "http/protobuf":
        log.warning(
            "tracing_not_supported",
            hint="the relay exports spans with OTEL_TRACES_EXPORTER=otlp over http/protobuf"
            " only; trace headers flow, no span is exported",
            exporter=exporter,
            protocol=protocol,
        )
        return None
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "callback-relay"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("tracing_exported", service_name=resource.attributes.get(SERVICE_NAME))
    return OtelTracer(provider)
