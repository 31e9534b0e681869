"""Admin API: events (find them, show one and the body it was made from, deliver it again)."""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from service import replays, subscribers
from service.admin_deliveries import HELD_BACK
from service.errors import InvalidInput, NotFound
from service.http.query import metadata_pairs, parse_time
from service.http.responses import JSONResponse
from service.operations import NO_SUCH, Call, NoBody, NoQuery, operation
from service.shapes.base import present
from service.shapes.events import (
    EventPage,
    EventQuery,
    Redelivered,
    Redelivery,
    SkippedSubscriber,
)
from service.shapes.replays import ForceQuery
from service.store import metadata_index
from service.store.base import EventFilter

TAG = "events"


@operation(
    "GET",
    "/events",
    tag=TAG,
    scope="read",
    summary="List events, newest first",
    success=(200, EventPage, "A page of events."),
)
async def list_events(call: Call[EventQuery, NoBody]) -> Response:
    query = call.query
    page = await call.relay.store.list_events(
        EventFilter(
            provider=present(query.provider),
            task_id=present(query.task_id),
            status=present(query.status),
            since=parse_time(present(query.since), "since"),
            metadata=metadata_pairs(present(query.metadata)),
        ),
        present(query.cursor),
        query.limit,
    )
    # The stored JSON goes out as stored, without being parsed again.
    items = [msgspec.Raw(item) for item in page.items]
    return JSONResponse(EventPage(items=items, next_cursor=page.next_cursor))


@operation(
    "GET",
    "/events/{event_id}",
    tag=TAG,
    scope="read",
    summary="One event",
    success=(200, {"$ref": "#/components/schemas/StoredEvent"}, "The event."),
    errors=NO_SUCH,
)
async def get_event(call: Call[NoQuery, NoBody]) -> Response:
    event = await call.relay.store.get_event(call.path("event_id"))
    if event is None:
        raise NotFound("No event with this id.")
    return JSONResponse(event)


@operation(
    "GET",
    "/events/{event_id}/raw",
    tag=TAG,
    scope="read",
    summary="The body an event was made from, byte for byte",
    success=(
        200,
        {},
        "The callback body (or poll answer) exactly as received; the event's data.raw may "
        "leave it out (raw_omitted).",
    ),
    errors=NO_SUCH,
)
async def get_event_raw(call: Call[NoQuery, NoBody]) -> Response:
    raw = await call.relay.store.get_event_raw(call.path("event_id"))
    if raw is None:
        raise NotFound("No event with this id.")
    return Response(raw, media_type="application/json")


@operation(
    "POST",
    "/events/{event_id}/redeliver",
    tag=TAG,
    scope="operate",
    summary="Deliver an event again (to one subscriber, or every enabled one that wants it)",
    success=(202, Redelivered, "Deliveries created."),
    errors={
        **NO_SUCH,
        400: "`invalid_request`, `event_superseded` (never delivered).",
        409: HELD_BACK,
    },
    body_required=False,
    idempotent=True,
)
async def redeliver_event(call: Call[ForceQuery, Redelivery]) -> Response:
    relay = call.relay
    event_id = call.path("event_id")
    force = call.body.force or call.query.force is True
    event = await relay.store.get_event(event_id)
    if event is None:
        raise NotFound("No event with this id.")
    if event["relay"]["state"] != "emitted":
        raise InvalidInput("A superseded event is never delivered.", code="event_superseded")
    subscriber_id = call.body.subscriber_id
    if subscriber_id is not None:
        targets = [await subscribers.require_enabled(relay.store, subscriber_id)]
    else:
        page = await relay.store.list_subscribers(None, 10_000)
        metadata = metadata_index.indexed(event["data"].get("metadata") or {})
        targets = [
            s
            for s in page.items
            if s.enabled and s.wants(event["data"]["provider"], event["type"], metadata)
        ]
    result = await relay.store.redeliver(
        event_id, [s.id for s in targets], relay.clock(), force=force
    )
    if subscriber_id is not None and subscriber_id in result.newer:
        raise replays.NewerEventDelivered(
            replays.redelivery_refusal(subscriber_id, result.newer[subscriber_id])
        )
    if result.count:
        relay.on_deliveries()
    skipped = [
        SkippedSubscriber(subscriber_id=held, newer_delivery_id=newer)
        for held, newer in result.newer.items()
    ]
    return JSONResponse(Redelivered(deliveries=result.count, skipped=skipped), status_code=202)


operations = [list_events, get_event, get_event_raw, redeliver_event]
