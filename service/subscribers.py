"""Subscribers: what operators register, checked before it reaches the store, and shown.

The shapes (``NewSubscriber``, ``SubscriberChanges``, ``Subscriber``...) are declared in
``service.shapes.subscribers``; this module adds what a shape cannot check alone (the target
URL against the SSRF policy) and the store's side.
"""

from __future__ import annotations

from typing import Any

from msgspec import UNSET, structs

from service import ids
from service.clock import Clock, rfc3339, system_clock
from service.errors import Conflict, InvalidInput, NotFound
from service.shapes.base import decode
from service.shapes.subscribers import (
    EVENT_TYPE_PATTERNS,
    NewSubscriber,
    RotatedSubscriber,
    SubscriberChanges,
    SubscriberWithSecret,
)
from service.shapes.subscribers import Subscriber as SubscriberShape
from service.signing import new_secret
from service.store import metadata_index
from service.store.base import Store, Subscriber
from service.store.records import MetadataFilter
from service.subscriber_options import masked_headers
from service.targets import TargetPolicy, check_target

__all__ = ["EVENT_TYPE_PATTERNS", "ROTATION_OVERLAP_SECONDS"]

#: How long a rotated-out secret keeps signing beside the new one.
ROTATION_OVERLAP_SECONDS = 24 * 3600


def metadata_filter(wanted: dict[str, str | int | bool]) -> MetadataFilter:
    """A subscriber's metadata filter (checked: ``metadata_index.filter_problem``) as the store
    keeps it: its values as the index reads them (42 and "42" are the same)."""
    return tuple(sorted((key, str(metadata_index.as_text(value))) for key, value in wanted.items()))


async def checked_changes(shape: SubscriberChanges, policy: TargetPolicy) -> dict[str, Any]:
    """The fields ``shape`` gives, as the store takes them; a new URL is checked against the
    SSRF policy (``target_not_allowed``...)."""
    changes: dict[str, Any] = {}
    for name, value in structs.asdict(shape).items():
        if value is UNSET:
            continue
        if name == "headers" and isinstance(value, dict):  # kept as (name, value) pairs
            value = tuple(value.items())
        changes[name] = tuple(value) if isinstance(value, list) else value
    if changes.get("metadata") is not None:
        problem = metadata_index.filter_problem(changes["metadata"])
        if problem is not None:
            raise InvalidInput(f"metadata: {problem}.", code="invalid_subscriber")
        changes["metadata"] = metadata_filter(changes["metadata"])
    if "url" in changes:
        await check_target(changes["url"], policy)
    return changes


async def validate_changes(
    body: dict[str, Any], policy: TargetPolicy, *, creating: bool
) -> dict[str, Any]:
    """The checked fields of a create or PATCH body (a JSON object); raises ``InvalidInput``."""
    shape = NewSubscriber if creating else SubscriberChanges
    return await checked_changes(decode(shape, body), policy)


def shown(sub: Subscriber) -> SubscriberShape:
    """A subscriber as the admin API lists it."""
    return SubscriberShape(**_fields(sub))


def shown_with_secret(sub: Subscriber) -> SubscriberWithSecret:
    """A subscriber just registered, with the secret it signs with."""
    return SubscriberWithSecret(**_fields(sub), secret=sub.secrets[0])


def shown_rotated(sub: Subscriber, now: float) -> RotatedSubscriber:
    """A subscriber just rotated: the new secret, and until when the previous one signs."""
    return RotatedSubscriber(
        **_fields(sub),
        secret=sub.secrets[0],
        previous_secret_valid_until=rfc3339(now + ROTATION_OVERLAP_SECONDS),
    )


def _fields(sub: Subscriber) -> dict[str, Any]:
    return {
        "id": sub.id,
        "url": sub.url,
        "description": sub.description,
        "providers": None if sub.providers is None else list(sub.providers),
        "event_types": None if sub.event_types is None else list(sub.event_types),
        "metadata": None if sub.metadata is None else dict(sub.metadata),
        "enabled": sub.enabled,
        "disabled_reason": sub.disabled_reason,
        "created_at": rfc3339(sub.created_at),
        "updated_at": rfc3339(sub.updated_at),
        "headers": masked_headers(sub.headers),
        "max_per_second": sub.max_per_second,
    }


async def register(
    store: Store, new: NewSubscriber, policy: TargetPolicy, clock: Clock = system_clock
) -> Subscriber:
    """Store a new subscriber, with a fresh secret."""
    changes = await checked_changes(new, policy)
    now = clock()
    subscriber = Subscriber(
        id=ids.new_id("sub"),
        url=changes["url"],
        description=changes.get("description"),
        providers=changes.get("providers"),
        event_types=changes.get("event_types"),
        metadata=changes.get("metadata"),
        enabled=changes.get("enabled", True),
        headers=changes.get("headers") or (),
        max_per_second=changes.get("max_per_second"),
        created_at=now,
        updated_at=now,
        secrets=(new_secret(),),
    )
    await store.create_subscriber(subscriber)
    return subscriber


async def create(
    store: Store, body: dict[str, Any], policy: TargetPolicy, clock: Clock = system_clock
) -> Subscriber:
    """``register`` from a JSON object (the console's form, ``relay subscribers add``)."""
    return await register(store, decode(NewSubscriber, body), policy, clock)


async def rotate(store: Store, subscriber_id: str, clock: Clock = system_clock) -> Subscriber:
    secret = new_secret()
    subscriber = await store.rotate_secret(
        subscriber_id, secret, clock() + ROTATION_OVERLAP_SECONDS
    )
    if subscriber is None:
        raise NotFound("No subscriber with this id.")
    return subscriber


async def require_enabled(store: Store, subscriber_id: str) -> Subscriber:
    subscriber = await store.get_subscriber(subscriber_id)
    if subscriber is None:
        raise NotFound("No subscriber with this id.")
    if not subscriber.enabled:
        reason = f" ({subscriber.disabled_reason})" if subscriber.disabled_reason else ""
        raise Conflict(
            f"Subscriber {subscriber_id} is disabled{reason}; enable it"
            f' (PATCH /v1/subscribers/{subscriber_id} {{"enabled": true}}) before replaying.',
            code="subscriber_disabled",
        )
    return subscriber
