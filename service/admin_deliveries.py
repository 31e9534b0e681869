"""Admin API: deliveries (find them, show one with its attempts, replay failed ones)."""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from service import replays, subscribers
from service.errors import NotFound
from service.http.query import metadata_pairs, parse_time
from service.http.responses import JSONResponse
from service.operations import NO_SUCH, Call, NoBody, NoQuery, operation
from service.shapes.base import present
from service.shapes.deliveries import (
    DeliveryDetail,
    DeliveryPage,
    DeliveryQuery,
    Replay,
    Replayed,
    ReplayedWindow,
    ReplayWindow,
    SkippedDelivery,
)
from service.shapes.replays import ForceQuery
from service.store.base import DeliveryFilter

TAG = "deliveries"
DISABLED = "`subscriber_disabled`: enable the subscriber first."
#: Why a replay or redelivery about one subscriber is refused.
HELD_BACK = (
    "`subscriber_disabled`: enable the subscriber first; `newer_event_delivered`: the"
    " subscriber already has a later event of the same task (the message names that"
    " delivery); `force` sends it anyway."
)


@operation(
    "GET",
    "/deliveries",
    tag=TAG,
    scope="read",
    summary="List deliveries, newest first",
    success=(200, DeliveryPage, "A page of deliveries."),
)
async def list_deliveries(call: Call[DeliveryQuery, NoBody]) -> Response:
    query = call.query
    page = await call.relay.store.list_deliveries(
        DeliveryFilter(
            status=present(query.status),
            subscriber_id=present(query.subscriber_id),
            event_id=present(query.event_id),
            since=parse_time(present(query.since), "since"),
            until=parse_time(present(query.until), "until"),
            metadata=metadata_pairs(present(query.metadata)),
        ),
        present(query.cursor),
        query.limit,
    )
    return JSONResponse(
        msgspec.convert({"items": page.items, "next_cursor": page.next_cursor}, DeliveryPage)
    )


@operation(
    "POST",
    "/deliveries/replay",
    tag=TAG,
    scope="operate",
    summary="Replay every failed delivery in a window (a fresh 1 s/2 s/4 s cycle)",
    success=(202, ReplayedWindow, "How many were replayed, and which were left alone."),
    errors={
        **NO_SUCH,
        400: "`invalid_query`, `invalid_request`.",
        409: DISABLED,
    },
    body_required=False,
    idempotent=True,
)
async def replay_deliveries(call: Call[ForceQuery, ReplayWindow]) -> Response:
    relay = call.relay
    window = call.body
    filters = DeliveryFilter(
        status="failed",
        subscriber_id=window.subscriber_id,
        since=parse_time(None if window.since is None else str(window.since), "since"),
        until=parse_time(None if window.until is None else str(window.until), "until"),
    )
    if filters.subscriber_id is not None:
        await subscribers.require_enabled(relay.store, filters.subscriber_id)
    force = window.force or call.query.force is True
    result = await replays.replay_many(relay, filters, None, force=force)
    skipped = [
        SkippedDelivery(id=held, newer_delivery_id=newer) for held, newer in result.newer.items()
    ]
    return JSONResponse(ReplayedWindow(replayed=result.count, skipped=skipped), status_code=202)


@operation(
    "GET",
    "/deliveries/{delivery_id}",
    tag=TAG,
    scope="read",
    summary="One delivery with every attempt",
    success=(200, DeliveryDetail, "The delivery."),
    errors=NO_SUCH,
)
async def get_delivery(call: Call[NoQuery, NoBody]) -> Response:
    delivery = await call.relay.store.get_delivery(call.path("delivery_id"))
    if delivery is None:
        raise NotFound("No delivery with this id.")
    return JSONResponse(msgspec.convert(delivery, DeliveryDetail))


@operation(
    "POST",
    "/deliveries/{delivery_id}/replay",
    tag=TAG,
    scope="operate",
    summary="Replay one failed delivery (same webhook-id, fresh retry cycle)",
    success=(202, Replayed, "Replayed (1), or not failed (0)."),
    errors={
        **NO_SUCH,
        400: "`invalid_query`, `invalid_request`.",
        409: HELD_BACK,
    },
    body_required=False,
    idempotent=True,
)
async def replay_delivery(call: Call[ForceQuery, Replay]) -> Response:
    force = call.body.force or call.query.force is True
    delivery, count = await replays.replay_one(call.relay, call.path("delivery_id"), force=force)
    return JSONResponse(Replayed(replayed=count, status=delivery["status"]), status_code=202)


operations = [list_deliveries, replay_deliveries, get_delivery, replay_delivery]
