"""Subscribers: validating what operators register, before it reaches the store."""

from __future__ import annotations

import time
from typing import Any

from service import ids
from service.clock import rfc3339
from service.errors import Conflict, InvalidInput, NotFound
from service.events import EVENT_TYPES
from service.providers import PROVIDERS
from service.signing import new_secret
from service.store.base import Store, Subscriber
from service.targets import TargetPolicy, check_target

#: How long a rotated-out secret keeps signing beside the new one.
ROTATION_OVERLAP_SECONDS = 24 * 3600


def _string_list(body: dict[str, Any], key: str, allowed: set[str]) -> tuple[str, ...] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidInput(f"{key} must be a list of strings.", code="invalid_subscriber")
    unknown = [item for item in value if item not in allowed]
    if unknown:
        raise InvalidInput(
            f"{key}: unknown value(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}.",
            code="invalid_subscriber",
        )
    return tuple(value)


EVENT_TYPE_PATTERNS = {*EVENT_TYPES, "generation.*", "*"}


async def validate_changes(
    body: dict[str, Any], policy: TargetPolicy, *, creating: bool
) -> dict[str, Any]:
    """The checked fields of a create or PATCH body; raises ``InvalidInput``."""
    known = {"url", "description", "providers", "event_types", "enabled"}
    extra = set(body) - known
    if extra:
        raise InvalidInput(
            f"Unknown field(s): {', '.join(sorted(extra))}.", code="invalid_subscriber"
        )
    changes: dict[str, Any] = {}
    if "url" in body or creating:
        url = body.get("url")
        if not isinstance(url, str) or not url:
            raise InvalidInput("url is required.", code="invalid_subscriber")
        await check_target(url, policy)
        changes["url"] = url
    if "description" in body:
        description = body["description"]
        if description is not None and (not isinstance(description, str) or len(description) > 500):
            raise InvalidInput(
                "description must be a string of at most 500 characters.", code="invalid_subscriber"
            )
        changes["description"] = description
    if "providers" in body:
        changes["providers"] = _string_list(body, "providers", set(PROVIDERS))
    if "event_types" in body:
        changes["event_types"] = _string_list(body, "event_types", EVENT_TYPE_PATTERNS)
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            raise InvalidInput("enabled must be true or false.", code="invalid_subscriber")
        changes["enabled"] = body["enabled"]
    return changes


def subscriber_json(sub: Subscriber, *, with_secret: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": sub.id,
        "url": sub.url,
        "description": sub.description,
        "providers": None if sub.providers is None else list(sub.providers),
        "event_types": None if sub.event_types is None else list(sub.event_types),
        "enabled": sub.enabled,
        "disabled_reason": sub.disabled_reason,
        "created_at": rfc3339(sub.created_at),
        "updated_at": rfc3339(sub.updated_at),
    }
    if with_secret:
        answer["secret"] = sub.secrets[0]
    return answer


async def create(store: Store, body: dict[str, Any], policy: TargetPolicy) -> Subscriber:
    changes = await validate_changes(body, policy, creating=True)
    now = time.time()
    subscriber = Subscriber(
        id=ids.new_id("sub"),
        url=changes["url"],
        description=changes.get("description"),
        providers=changes.get("providers"),
        event_types=changes.get("event_types"),
        enabled=changes.get("enabled", True),
        created_at=now,
        updated_at=now,
        secrets=(new_secret(),),
    )
    await store.create_subscriber(subscriber)
    return subscriber


async def rotate(store: Store, subscriber_id: str) -> Subscriber:
    secret = new_secret()
    subscriber = await store.rotate_secret(
        subscriber_id, secret, time.time() + ROTATION_OVERLAP_SECONDS
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
