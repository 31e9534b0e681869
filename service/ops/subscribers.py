"""The console's subscribers: the list, adding one, enabling, disabling, changing its filters,
its rate limit and its custom headers (shown masked), and rotating its secret (the new secret
is shown once, on a page never cached)."""

from __future__ import annotations

from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response

from service import subscribers as subscriber_rules
from service.errors import InvalidInput
from service.events import EVENT_TYPES
from service.ops import session as sessions
from service.ops.guards import Form, form_value
from service.ops.list_filters import metadata_entries
from service.ops.rendering import redirect_back, relay_of, render
from service.providers import PROVIDERS
from service.targets import TargetPolicy

log = structlog.get_logger("service.ops")

TYPE_CHOICES = (*EVENT_TYPES, "generation.*")


async def subscribers_page(request: Request, session: sessions.Session) -> Response:
    relay = relay_of(request)
    found = await relay.store.list_subscribers(None, 500)
    return render(
        request,
        "subscribers.html",
        {
            "subscribers": found.items,
            "more": found.next_cursor is not None,
            "providers": sorted(PROVIDERS),
            "types": TYPE_CHOICES,
        },
        session=session,
    )


def _choices(form: Form, key: str, allowed: tuple[str, ...]) -> list[str] | None:
    """Ticked boxes; none ticked means no filter (all)."""
    chosen = [value for value in form.get(key, []) if value in allowed]
    return chosen or None


async def create(request: Request, session: sessions.Session, form: Form) -> Response:
    relay = relay_of(request)
    body: dict[str, Any] = {
        "url": form_value(form, "url").strip(),
        "providers": _choices(form, "providers", tuple(sorted(PROVIDERS))),
        "event_types": _choices(form, "event_types", TYPE_CHOICES),
    }
    if form_value(form, "description").strip():
        body["description"] = form_value(form, "description").strip()
    body["metadata"] = metadata_entries(form_value(form, "metadata")) or None
    created = await subscriber_rules.create(
        relay.store, body, TargetPolicy.from_settings(relay.settings)
    )
    log.info("ops_subscriber_created", subscriber_id=created.id)
    return _secret_page(request, session, created, "Subscriber added")


async def update(request: Request, _session: sessions.Session, form: Form) -> Response:
    relay = relay_of(request)
    subscriber_id = request.path_params["subscriber_id"]
    what = form_value(form, "action")
    if what in ("enable", "disable"):
        changes: dict[str, Any] = {"enabled": what == "enable"}
    elif what == "filters":
        changes = {
            "providers": _choices(form, "providers", tuple(sorted(PROVIDERS))),
            "event_types": _choices(form, "event_types", TYPE_CHOICES),
            "metadata": metadata_entries(form_value(form, "metadata")) or None,
        }
    elif what == "rate":
        changes = {"max_per_second": _rate(form_value(form, "max_per_second"))}
    elif what == "headers":
        changes = {"headers": _headers(form_value(form, "headers"))}
    else:
        return redirect_back(request, "/ops/subscribers", "Unknown action.", "error")
    checked = await subscriber_rules.validate_changes(
        changes, TargetPolicy.from_settings(relay.settings), creating=False
    )
    updated = await relay.store.update_subscriber(subscriber_id, checked)
    if updated is None:
        return redirect_back(request, "/ops/subscribers", "No such subscriber.", "error")
    if checked.get("enabled"):
        relay.on_deliveries()  # deliveries that waited for it are due again
    log.info("ops_subscriber_changed", subscriber_id=subscriber_id, change=what)
    words = {
        "enable": "enabled",
        "disable": "disabled",
        "filters": "filters saved",
        "rate": "rate limit saved",
        "headers": "headers saved",
    }
    return redirect_back(request, "/ops/subscribers", f"{subscriber_id}: {words[what]}.")


def _rate(text: str) -> float | str | None:
    """The rate limit field: empty for none; anything else goes to the shape's check."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text  # refused as not a number, in the API's words


def _headers(text: str) -> dict[str, str] | None:
    """The headers field: one ``Name: value`` a line; empty for none."""
    headers: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise InvalidInput(
                "headers: one header a line, as Name: value.", code="invalid_subscriber"
            )
        headers[name.strip()] = value.strip()
    return headers or None


async def rotate_secret(request: Request, session: sessions.Session, _form: Form) -> Response:
    relay = relay_of(request)
    rotated = await subscriber_rules.rotate(relay.store, request.path_params["subscriber_id"])
    log.info("ops_secret_rotated", subscriber_id=rotated.id)
    return _secret_page(request, session, rotated, "Secret rotated")


def _secret_page(
    request: Request, session: sessions.Session, subscriber: Any, title: str
) -> Response:
    hours = subscriber_rules.ROTATION_OVERLAP_SECONDS // 3600
    return render(
        request,
        "secret.html",
        {
            "title": title,
            "s": subscriber,
            "secret": subscriber.secrets[0],
            "overlap_hours": hours,
            "rotated": title == "Secret rotated",
        },
        session=session,
    )
