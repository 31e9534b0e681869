"""Deliveries: finding them, their attempts, and replaying failed ones."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from service.shapes.base import WHEN, MetadataPageQuery, Shape, Time
from service.shapes.replays import Force

DeliveryStatus = Literal["pending", "succeeded", "failed", "canceled"]
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = ("pending", "succeeded", "failed", "canceled")


class DeliveryQuery(MetadataPageQuery, kw_only=True):
    """``GET /v1/deliveries``: newest first."""

    status: Annotated[DeliveryStatus, Meta(description="Only this status.")] | UnsetType = UNSET
    subscriber_id: Annotated[str, Meta(description="Only this subscriber's.")] | UnsetType = UNSET
    event_id: Annotated[str, Meta(description="Only this event's.")] | UnsetType = UNSET
    since: Annotated[str, Meta(description=f"Last changed at or after: {WHEN}")] | UnsetType = UNSET
    until: Annotated[str, Meta(description=f"Last changed before: {WHEN}")] | UnsetType = UNSET


class Delivery(msgspec.Struct, kw_only=True):
    """One event on its way to one subscriber."""

    id: str
    event_id: str
    subscriber_id: str
    status: DeliveryStatus
    attempt_count: Annotated[int, Meta(ge=0)]
    next_attempt_at: Time | None
    last_error: str | None
    created_at: Time
    updated_at: Time


class Attempt(msgspec.Struct, kw_only=True):
    """One try at sending a delivery."""

    attempted_at: Time
    trigger: Literal["scheduled", "replay"]
    status_code: int | None
    latency_ms: float
    error: str | None
    response_excerpt: Annotated[str, Meta(description="The first 1 KiB of the answer.")] | None


class DeliveryDetail(Delivery, kw_only=True):
    """A delivery with every attempt, oldest first."""

    attempts: list[Attempt]


class DeliveryPage(msgspec.Struct, kw_only=True):
    items: list[Delivery]
    next_cursor: str | None


class Replay(Shape, kw_only=True):
    """``POST /v1/deliveries/{delivery_id}/replay``."""

    field_codes: ClassVar[dict[str, str]] = {"force": "invalid_request"}
    error_code: ClassVar[str] = "invalid_query"

    force: Force = False


class Replayed(msgspec.Struct, kw_only=True):
    """Replayed (1), or not failed (0)."""

    replayed: Annotated[int, Meta(ge=0, le=1)]
    status: DeliveryStatus


#: ``since`` and ``until`` of a replay window: either form of a time.
WindowTime = Annotated[str | float, Meta(description=WHEN)]


class ReplayWindow(Shape, kw_only=True):
    """``POST /v1/deliveries/replay``: every failed delivery in the window (and of the
    subscriber, if given)."""

    field_codes: ClassVar[dict[str, str]] = {"force": "invalid_request"}
    error_code: ClassVar[str] = "invalid_query"

    subscriber_id: str | None = None
    since: WindowTime | None = None
    until: WindowTime | None = None
    force: Force = False


class SkippedDelivery(msgspec.Struct, kw_only=True):
    """Left alone: a later event of the task already reached its subscriber."""

    id: str
    newer_delivery_id: str


class ReplayedWindow(msgspec.Struct, kw_only=True):
    replayed: Annotated[int, Meta(ge=0)]
    skipped: list[SkippedDelivery]
