"""Events: finding them, and delivering one again.

The event itself (a CloudEvent) is declared once, as the JSON Schema subscribers validate
against (``service/schemas/generation-event.schema.json``); the OpenAPI document takes it from
there, and a page of events splices the stored JSON without parsing it (``msgspec.Raw``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from service.shapes.base import WHEN, MetadataPageQuery, Shape
from service.shapes.replays import Force

EventStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]

#: A stored event's JSON with its state at the relay (its schema is StoredEvent's).
StoredEventJson = Annotated[
    msgspec.Raw, Meta(extra_json_schema={"$ref": "#/components/schemas/StoredEvent"})
]


class EventQuery(MetadataPageQuery, kw_only=True):
    """``GET /v1/events``: newest first."""

    provider: Annotated[str, Meta(description="Only this provider's.")] | UnsetType = UNSET
    task_id: Annotated[str, Meta(description="Only this task's.")] | UnsetType = UNSET
    status: Annotated[EventStatus, Meta(description="Only this status.")] | UnsetType = UNSET
    since: Annotated[str, Meta(description=f"Received at or after: {WHEN}")] | UnsetType = UNSET


class EventPage(msgspec.Struct, kw_only=True):
    items: list[StoredEventJson]
    next_cursor: str | None


class Redelivery(Shape, kw_only=True):
    """``POST /v1/events/{event_id}/redeliver``."""

    subscriber_id: (
        Annotated[
            str,
            Meta(
                description="Only to this subscriber; else every enabled one that wants the event."
            ),
        ]
        | None
    ) = None
    force: Force = False


class SkippedSubscriber(msgspec.Struct, kw_only=True):
    """Left alone: a later event of the task already reached this subscriber."""

    subscriber_id: str
    newer_delivery_id: str


class Redelivered(msgspec.Struct, kw_only=True):
    deliveries: Annotated[int, Meta(ge=0)]
    skipped: list[SkippedSubscriber]
