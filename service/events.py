"""The event schema every provider is normalized into: a CloudEvents 1.0 JSON object.

``Normalized`` is what a provider's normalizer returns; ``build_cloudevent`` wraps it with the
relay's id, time and the callback URL's metadata. The JSON Schema subscribers can validate
against is ``service/schemas/generation-event.schema.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from service.clock import rfc3339
from service.tracing import TraceContext

STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})
MEDIA_TYPES = ("image", "video", "audio", "text")
EVENT_TYPES = tuple(f"generation.{status}" for status in STATUSES)


# Built for every callback, so not frozen (a frozen dataclass costs six times as much to build);
# nothing changes them once built.
@dataclass(slots=True)
class Output:
    url: str
    media_type: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"url": self.url, "media_type": self.media_type}


@dataclass(slots=True)
class Normalized:
    """One provider update, in the relay's vocabulary.

    ``raw_status`` is the provider's own word; ``unknown_status`` is true when the relay did not
    recognise it and mapped it to ``running`` (such updates are kept and logged, never refused).
    """

    task_id: str
    status: str
    progress: int | None = None
    model: str | None = None
    media_type: str | None = None
    outputs: tuple[Output, ...] = ()
    error: dict[str, str] | None = None
    raw_status: str | None = None
    unknown_status: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def event_type(self) -> str:
        return f"generation.{self.status}"

    def dedup_key(self, provider: str) -> str:
        """Same provider, task, status and progress: the same update (providers retry)."""
        progress = "" if self.progress is None else str(self.progress)
        return f"{provider}\x1f{self.task_id}\x1f{self.status}\x1f{progress}"


def build_cloudevent(
    *,
    event_id: str,
    provider: str,
    normalized: Normalized,
    received_at: float,
    metadata: dict[str, Any],
    raw: Any,
    raw_omitted: str | None = None,
    trace: TraceContext | None = None,
) -> dict[str, Any]:
    """The CloudEvent (structured mode) subscribers receive for one update.

    ``raw_omitted``: why ``raw`` is left out (``service.forwarding``), when it is. ``trace``:
    the context the event was created in (``service.tracing``), carried as the CloudEvents
    Distributed Tracing extension (``traceparent``, ``tracestate``). ``data`` is written last:
    ``service.tracing.event_context`` reads the attributes before it.
    """
    data: dict[str, Any] = {
        "provider": provider,
        "task_id": normalized.task_id,
        "status": normalized.status,
        "progress": normalized.progress,
        "model": normalized.model,
        "media_type": normalized.media_type,
        "outputs": [output.as_json() for output in normalized.outputs],
        "error": normalized.error,
        "metadata": metadata,
        "raw": raw,
    }
    if raw_omitted is not None:
        data["raw_omitted"] = raw_omitted
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": f"/providers/{provider}",
        "type": normalized.event_type,
        "subject": normalized.task_id,
        "time": rfc3339(received_at),
        "datacontenttype": "application/json",
    }
    if trace is not None:
        event["traceparent"] = trace.traceparent
        if trace.tracestate is not None:
            event["tracestate"] = trace.tracestate
    event["data"] = data
    return event


def dumps(value: Any) -> str:
    """Compact JSON (UTF-8, no NaN), the exact text stored and delivered."""
    return orjson.dumps(value).decode()


def verbatim_json(raw_json: bytes) -> orjson.Fragment:
    """``data.raw`` for a body already checked to be strict JSON: its exact bytes, spliced in by
    ``dumps`` rather than re-encoded from the parsed payload (faster, and numbers keep every
    digit the provider sent)."""
    return orjson.Fragment(raw_json.strip())
