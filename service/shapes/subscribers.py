"""Subscribers: registering, changing and showing one."""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from service.errors import InvalidInput
from service.events import EVENT_TYPES
from service.providers import PROVIDERS
from service.shapes.base import PageQuery, Shape, Time
from service.store import metadata_index
from service.subscriber_options import check_headers, check_max_per_second

#: What ``event_types`` accepts: the event types, and ``generation.*`` or ``*`` for all.
EVENT_TYPE_PATTERNS = frozenset({*EVENT_TYPES, "generation.*", "*"})

ProviderList = Annotated[
    list[Annotated[str, Meta(extra_json_schema={"enum": sorted(PROVIDERS)})]],
    Meta(description="Only events of these providers; null: all."),
]
EventTypeList = Annotated[
    list[Annotated[str, Meta(extra_json_schema={"enum": sorted(EVENT_TYPE_PATTERNS)})]],
    Meta(description="Only these event types (`generation.*` and `*`: all); null: all."),
]
MetadataMatch = Annotated[
    dict[
        Annotated[str, Meta(pattern=f"^{metadata_index.KEY.pattern}$")],
        Annotated[str, Meta(max_length=metadata_index.MAX_VALUE)] | int | bool,
    ],
    Meta(
        max_length=metadata_index.MAX_FILTER_KEYS,
        description="Only events whose metadata holds all these entries (exact values: strings,"
        " integers, booleans; keys of letters, digits, `_`, `-`); null: all. Applies to events"
        " received after the change.",
    ),
]
Description = Annotated[str, Meta(max_length=500)]
CustomHeaders = Annotated[
    dict[str, str],
    Meta(
        description=(
            "Headers sent with every delivery (an API gateway's key...); at most 10, never"
            " the relay's own (webhook-*, content-type, host...). Shown masked; null: none."
        )
    ),
]
MaxPerSecond = Annotated[
    float,
    Meta(
        description=(
            "Deliveries a second this subscriber takes at most, per relay process"
            " (0.01 to 1000); null: no limit."
        )
    ),
]
TargetUrl = Annotated[str, Meta(min_length=1, description="Where events are posted.")]


def _refuse_unknown(
    key: str, values: list[str] | UnsetType | None, allowed: frozenset[str]
) -> None:
    if not isinstance(values, list):
        return
    unknown = [value for value in values if value not in allowed]
    if unknown:
        raise InvalidInput(
            f"{key}: unknown value(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}.",
            code="invalid_subscriber",
        )


class SubscriberChanges(Shape, kw_only=True):
    """``PATCH /v1/subscribers/{id}``: the fields given change, the others stay."""

    error_code: ClassVar[str] = "invalid_subscriber"

    url: TargetUrl | UnsetType = UNSET
    description: Description | UnsetType | None = UNSET
    providers: ProviderList | UnsetType | None = UNSET
    event_types: EventTypeList | UnsetType | None = UNSET
    metadata: MetadataMatch | UnsetType | None = UNSET
    enabled: bool | UnsetType = UNSET
    headers: CustomHeaders | UnsetType | None = UNSET
    max_per_second: MaxPerSecond | UnsetType | None = UNSET

    def __post_init__(self) -> None:
        _refuse_unknown("providers", self.providers, frozenset(PROVIDERS))
        _refuse_unknown("event_types", self.event_types, EVENT_TYPE_PATTERNS)
        if isinstance(self.headers, dict):
            check_headers(self.headers)
        if isinstance(self.max_per_second, float | int):
            check_max_per_second(self.max_per_second)


class NewSubscriber(SubscriberChanges, kw_only=True):
    """``POST /v1/subscribers``: ``url`` is required; the others default to all, enabled."""

    url: TargetUrl


class Subscriber(msgspec.Struct, kw_only=True):
    """A subscriber as listed (its secret is never shown again after it is issued)."""

    id: str
    url: str
    description: str | None
    providers: ProviderList | None
    event_types: EventTypeList | None
    metadata: Annotated[dict[str, str], Meta(description="Its metadata filter.")] | None
    enabled: bool
    disabled_reason: str | None
    created_at: Time
    updated_at: Time
    headers: Annotated[
        dict[str, str] | None,
        Meta(description="Its custom headers, values masked (`***`, or `***` and the last 4)."),
    ] = None
    max_per_second: MaxPerSecond | None = None


class SubscriberWithSecret(Subscriber, kw_only=True):
    """A subscriber just registered or rotated, with its signing secret."""

    secret: Annotated[
        str,
        Meta(pattern="^whsec_", description="The signing secret, shown in full only here."),
    ]


class RotatedSubscriber(SubscriberWithSecret, kw_only=True):
    """A rotated subscriber: the previous secret signs beside the new one until then."""

    previous_secret_valid_until: Time


class SubscriberPage(msgspec.Struct, kw_only=True):
    items: list[Subscriber]
    next_cursor: str | None


class SubscriberListQuery(PageQuery, kw_only=True):
    """``GET /v1/subscribers``: oldest first."""
