"""Admin API: subscribers (register, list, show, change, remove, rotate the secret)."""

from __future__ import annotations

from starlette.responses import Response

from service import subscribers
from service.errors import NotFound
from service.http.responses import JSONResponse
from service.operations import NO_SUCH, Call, NoBody, NoQuery, operation
from service.shapes.base import present
from service.shapes.subscribers import (
    NewSubscriber,
    RotatedSubscriber,
    Subscriber,
    SubscriberChanges,
    SubscriberListQuery,
    SubscriberPage,
    SubscriberWithSecret,
)
from service.targets import TargetPolicy

TAG = "subscribers"
SSRF = "`target_not_allowed`, `target_unresolvable`: the SSRF policy refuses the URL."


@operation(
    "POST",
    "/subscribers",
    tag=TAG,
    scope="admin",
    summary="Register a subscriber (its secret is shown once, here)",
    success=(201, SubscriberWithSecret, "Registered."),
    errors={400: "`invalid_subscriber`, `invalid_url`.", 422: SSRF},
    idempotent=True,
)
async def create_subscriber(call: Call[NoQuery, NewSubscriber]) -> Response:
    relay = call.relay
    policy = TargetPolicy.from_settings(relay.settings)
    subscriber = await subscribers.register(relay.store, call.body, policy, relay.clock)
    return JSONResponse(subscribers.shown_with_secret(subscriber), status_code=201)


@operation(
    "GET",
    "/subscribers",
    tag=TAG,
    scope="read",
    summary="List subscribers, oldest first",
    success=(200, SubscriberPage, "A page of subscribers."),
)
async def list_subscribers(call: Call[SubscriberListQuery, NoBody]) -> Response:
    page = await call.relay.store.list_subscribers(present(call.query.cursor), call.query.limit)
    return JSONResponse(
        SubscriberPage(
            items=[subscribers.shown(s) for s in page.items], next_cursor=page.next_cursor
        )
    )


@operation(
    "GET",
    "/subscribers/{subscriber_id}",
    tag=TAG,
    scope="read",
    summary="One subscriber",
    success=(200, Subscriber, "The subscriber."),
    errors=NO_SUCH,
)
async def get_subscriber(call: Call[NoQuery, NoBody]) -> Response:
    subscriber = await call.relay.store.get_subscriber(call.path("subscriber_id"))
    if subscriber is None:
        raise NotFound("No subscriber with this id.")
    return JSONResponse(subscribers.shown(subscriber))


@operation(
    "PATCH",
    "/subscribers/{subscriber_id}",
    tag=TAG,
    scope="admin",
    summary="Change url, description, filters or enabled",
    success=(200, Subscriber, "Changed."),
    errors={**NO_SUCH, 400: "`invalid_subscriber`, `invalid_url`.", 422: SSRF},
    body_required=False,
)
async def update_subscriber(call: Call[NoQuery, SubscriberChanges]) -> Response:
    relay = call.relay
    changes = await subscribers.checked_changes(
        call.body, TargetPolicy.from_settings(relay.settings)
    )
    subscriber_id = call.path("subscriber_id")
    subscriber = (
        await relay.store.update_subscriber(subscriber_id, changes)
        if changes
        else await relay.store.get_subscriber(subscriber_id)
    )
    if subscriber is None:
        raise NotFound("No subscriber with this id.")
    if changes.get("enabled"):
        relay.on_deliveries()  # deliveries that waited for it are due again
    return JSONResponse(subscribers.shown(subscriber))


@operation(
    "DELETE",
    "/subscribers/{subscriber_id}",
    tag=TAG,
    scope="admin",
    summary="Remove a subscriber (its pending deliveries fail)",
    success=(204, None, "Removed."),
    errors=NO_SUCH,
)
async def delete_subscriber(call: Call[NoQuery, NoBody]) -> Response:
    relay = call.relay
    if not await relay.store.delete_subscriber(call.path("subscriber_id"), relay.clock()):
        raise NotFound("No subscriber with this id.")
    return Response(status_code=204)


@operation(
    "POST",
    "/subscribers/{subscriber_id}/rotate-secret",
    tag=TAG,
    scope="admin",
    summary="Issue a new secret; the old one signs beside it for 24 hours",
    success=(200, RotatedSubscriber, "Rotated."),
    errors=NO_SUCH,
)
async def rotate_secret(call: Call[NoQuery, NoBody]) -> Response:
    relay = call.relay
    subscriber = await subscribers.rotate(relay.store, call.path("subscriber_id"), relay.clock)
    return JSONResponse(subscribers.shown_rotated(subscriber, relay.clock()))


operations = [
    create_subscriber,
    list_subscribers,
    get_subscriber,
    update_subscriber,
    delete_subscriber,
    rotate_secret,
]
