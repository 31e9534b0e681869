"""The console's deliveries: the failed ones first (filtered by status, subscriber, provider,
time and their events' metadata), one delivery with its attempts, and replaying one or all
of those shown."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response

from service import replays
from service.clock import Clock
from service.durations import TIME_FORMATS, point_in_time
from service.errors import InvalidInput, RelayError
from service.ops import session as sessions
from service.ops.guards import Form, form_value
from service.ops.list_filters import metadata_search, query_refusal
from service.ops.rendering import PAGE_ROWS, message, redirect_back, relay_of, render, render_list
from service.providers import PROVIDERS
from service.store.base import DeliveryFilter, Store, Subscriber
from service.store.records import MetadataFilter

log = structlog.get_logger("service.ops")

DELIVERY_STATUSES = ("failed", "pending", "succeeded", "canceled")
#: What the deliveries page reads from its query.
DELIVERY_PARAMETERS = ("status", "subscriber", "provider", "since", "until", "meta")


def time_filter(value: str, name: str, clock: Clock) -> float | None:
    """``2h`` (ago), ``2026-11-21T17:30`` (UTC, as a datetime-local field sends it), an RFC
    3339 time or Unix seconds (``durations.point_in_time``); None when empty.
    ``InvalidInput`` naming the formats otherwise."""
    if not value.strip():
        return None
    when = point_in_time(value, clock())
    if when is None:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidInput(f"{name} must be {TIME_FORMATS}; got {shown!r}.", code="invalid_query")
    return when


async def deliveries_page(request: Request, session: sessions.Session) -> Response:
    relay = relay_of(request)
    query = request.query_params
    values = {
        "status": query.get("status", "failed"),
        "subscriber": query.get("subscriber", ""),
        "provider": query.get("provider", ""),
        "since": query.get("since", ""),
        "until": query.get("until", ""),
        "meta": query.get("meta", ""),
    }
    error = query_refusal(query, DELIVERY_PARAMETERS)
    items: list[dict[str, Any]] = []
    retrying: list[dict[str, Any]] = []
    metadata: MetadataFilter = ()
    if error is None and values["status"] not in (*DELIVERY_STATUSES, "any"):
        error = f"Unknown status {values['status']!r}."
        values["status"] = "failed"
    if error is None and values["provider"] and values["provider"] not in PROVIDERS:
        error = f"Unknown provider {values['provider']!r}."
    try:
        since = time_filter(values["since"], "since", relay.clock)
        until = time_filter(values["until"], "until", relay.clock)
        metadata = metadata_search(values["meta"])
    except RelayError as exc:
        error, since, until = error or exc.message, None, None
    if error is None:
        filters = DeliveryFilter(
            status=None if values["status"] == "any" else values["status"],  # type: ignore[arg-type]
            subscriber_id=values["subscriber"] or None,
            since=since,
            until=until,
            metadata=metadata,
        )
        provider = values["provider"] or None
        items = await relay.store.delivery_details(filters, provider, PAGE_ROWS)
        if values["status"] == "failed":
            # What a replay turned back into pending (and what else is between attempts): the
            # failed list alone would look empty while they are being tried, or failing, again.
            retrying = await relay.store.delivery_details(
                replace(filters, status="pending"), provider, PAGE_ROWS
            )
    page_subscribers = await relay.store.list_subscribers(None, 500)
    return render_list(
        request,
        "deliveries.html",
        ("items", items),
        values,
        error,
        {
            "retrying": retrying,
            "statuses": (*DELIVERY_STATUSES, "any"),
            "providers": sorted(PROVIDERS),
            "subscribers": page_subscribers.items,
            "subscriber_of": await subscribers_of(
                relay.store, [*items, *retrying], page_subscribers.items
            ),
            "back": str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
        },
        session,
    )


async def subscribers_of(
    store: Store, deliveries: list[dict[str, Any]], known: list[Subscriber]
) -> dict[str, Subscriber]:
    """The subscribers of ``deliveries`` by id (description and URL for each row): those of
    ``known`` (the page's filter list), and any other looked up once each."""
    found = {subscriber.id: subscriber for subscriber in known}
    for subscriber_id in dict.fromkeys(d["subscriber_id"] for d in deliveries):
        if subscriber_id not in found:
            subscriber = await store.get_subscriber(subscriber_id)
            if subscriber is not None:  # deleted: the row says so
                found[subscriber_id] = subscriber
    return found


async def delivery_page(request: Request, session: sessions.Session) -> Response:
    relay = relay_of(request)
    delivery = await relay.store.get_delivery(request.path_params["delivery_id"])
    if delivery is None:
        return message(request, "Not found", "No delivery with this id.", 404, session)
    subscriber = await relay.store.get_subscriber(delivery["subscriber_id"])
    newer = None
    if delivery["status"] == "failed":  # would a replay be held back? (see service.replays)
        line = await relay.store.delivery_details(
            DeliveryFilter(
                event_id=delivery["event_id"],
                subscriber_id=delivery["subscriber_id"],
                status="failed",
            ),
            None,
            PAGE_ROWS,
        )
        newer = next((d["newer_delivery_id"] for d in line if d["id"] == delivery["id"]), None)
    return render(
        request,
        "delivery.html",
        {"d": delivery, "subscriber": subscriber, "newer": newer, "back": request.url.path},
        session=session,
    )


async def replay_one(request: Request, _session: sessions.Session, form: Form) -> Response:
    relay = relay_of(request)
    delivery_id = request.path_params["delivery_id"]
    back = form_value(form, "back", f"/ops/deliveries/{delivery_id}")
    force = form_value(form, "force") == "1"
    delivery, count = await replays.replay_one(relay, delivery_id, force=force)
    if count:
        log.info(
            "ops_replay",
            delivery_id=delivery_id,
            subscriber_id=delivery["subscriber_id"],
            forced=force,
        )
        return redirect_back(request, back, f"Replaying {delivery_id}: a fresh retry cycle.")
    return redirect_back(
        request, back, f"{delivery_id} is {delivery['status']}, not failed: nothing to replay."
    )


async def replay_shown(request: Request, _session: sessions.Session, form: Form) -> Response:
    relay = relay_of(request)
    ids = list(dict.fromkeys(i for i in form.get("ids", []) if i))[:PAGE_ROWS]
    back = form_value(form, "back", "/ops/deliveries")
    if not ids:
        return redirect_back(request, back, "Nothing shown, nothing replayed.")
    # Never forced: rows held back by a newer delivery are not in the form, and one that
    # became so since the page was shown is skipped here and named in the notice.
    result = await replays.replay_many(relay, DeliveryFilter(), ids, force=False)
    count = result.count
    log.info("ops_replay_shown", shown=len(ids), replayed=count, held=len(result.newer))
    skipped = len(ids) - count - len(result.newer)
    note = f"; {skipped} skipped (no longer failed, or subscriber disabled)" if skipped else ""
    if result.newer:
        note += (
            f"; {len(result.newer)} held back, a later event of their task already delivered:"
            f" {', '.join(result.newer)}"
        )
    if count:
        note += ". They are retrying now, listed below until each succeeds or fails again"
    return redirect_back(request, back, f"Replayed {count} of {len(ids)} shown{note}.")
