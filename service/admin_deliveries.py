"""Admin API for subscribers, deliveries and replay (bearer ``RELAY_ADMIN_TOKEN``)."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import replays, subscribers
from service.clock import rfc3339
from service.errors import InvalidInput, NotFound
from service.http import JSONResponse, parse_limit, parse_time, read_json_object, require_admin
from service.relay import Relay
from service.store.base import DeliveryFilter
from service.targets import TargetPolicy

DELIVERY_STATUSES = ("pending", "succeeded", "failed", "canceled")


def _relay(request: Request) -> Relay:
    require_admin(request)
    return request.app.state.relay  # type: ignore[no-any-return]


def _policy(relay: Relay) -> TargetPolicy:
    return TargetPolicy.from_settings(relay.settings)


# -- subscribers ----------------------------------------------------------------------------


async def create_subscriber(request: Request) -> Response:
    relay = _relay(request)
    subscriber = await subscribers.create(
        relay.store, await read_json_object(request), _policy(relay)
    )
    return JSONResponse(subscribers.subscriber_json(subscriber, with_secret=True), status_code=201)


async def list_subscribers(request: Request) -> Response:
    relay = _relay(request)
    page = await relay.store.list_subscribers(
        request.query_params.get("cursor"), parse_limit(request.query_params.get("limit"))
    )
    return JSONResponse(
        {
            "items": [subscribers.subscriber_json(s) for s in page.items],
            "next_cursor": page.next_cursor,
        }
    )


async def get_subscriber(request: Request) -> Response:
    relay = _relay(request)
    subscriber = await relay.store.get_subscriber(request.path_params["subscriber_id"])
    if subscriber is None:
        raise NotFound("No subscriber with this id.")
    return JSONResponse(subscribers.subscriber_json(subscriber))


async def update_subscriber(request: Request) -> Response:
    relay = _relay(request)
    changes = await subscribers.validate_changes(
        await read_json_object(request), _policy(relay), creating=False
    )
    subscriber_id = request.path_params["subscriber_id"]
    subscriber = (
        await relay.store.update_subscriber(subscriber_id, changes)
        if changes
        else await relay.store.get_subscriber(subscriber_id)
    )
    if subscriber is None:
        raise NotFound("No subscriber with this id.")
    if changes.get("enabled"):
        relay.on_deliveries()  # deliveries that waited for it are due again
    return JSONResponse(subscribers.subscriber_json(subscriber))


async def delete_subscriber(request: Request) -> Response:
    relay = _relay(request)
    if not await relay.store.delete_subscriber(request.path_params["subscriber_id"], time.time()):
        raise NotFound("No subscriber with this id.")
    return Response(status_code=204)


async def rotate_secret(request: Request) -> Response:
    relay = _relay(request)
    subscriber = await subscribers.rotate(relay.store, request.path_params["subscriber_id"])
    answer = subscribers.subscriber_json(subscriber, with_secret=True)
    answer["previous_secret_valid_until"] = rfc3339(
        time.time() + subscribers.ROTATION_OVERLAP_SECONDS
    )
    return JSONResponse(answer)


# -- deliveries -----------------------------------------------------------------------------


def _delivery_filter(source: dict[str, Any], *, status: str | None) -> DeliveryFilter:
    for key in ("subscriber_id", "since", "until"):
        if source.get(key) is not None and not isinstance(source[key], str | int | float):
            raise InvalidInput(f"{key} must be a string.", code="invalid_query")
    if status is not None and status not in DELIVERY_STATUSES:
        raise InvalidInput(
            f"status must be one of {', '.join(DELIVERY_STATUSES)}.", code="invalid_query"
        )
    since = source.get("since")
    until = source.get("until")
    return DeliveryFilter(
        status=status,  # type: ignore[arg-type]
        subscriber_id=source.get("subscriber_id"),
        event_id=source.get("event_id"),
        since=parse_time(None if since is None else str(since), "since"),
        until=parse_time(None if until is None else str(until), "until"),
    )


async def list_deliveries(request: Request) -> Response:
    relay = _relay(request)
    query = dict(request.query_params)
    page = await relay.store.list_deliveries(
        _delivery_filter(query, status=query.get("status")),
        query.get("cursor"),
        parse_limit(query.get("limit")),
    )
    return JSONResponse({"items": page.items, "next_cursor": page.next_cursor})


async def get_delivery(request: Request) -> Response:
    relay = _relay(request)
    delivery = await relay.store.get_delivery(request.path_params["delivery_id"])
    if delivery is None:
        raise NotFound("No delivery with this id.")
    return JSONResponse(delivery)


def _force(request: Request, body: dict[str, Any]) -> bool:
    """``force``: ``true`` in the JSON body (a boolean) or in the query (``?force=true``)."""
    query = request.query_params.getlist("force")
    value = body.get("force", False)
    if not isinstance(value, bool) or any(v not in ("true", "false") for v in query):
        raise InvalidInput("force must be true or false.", code="invalid_request")
    return value or "true" in query


async def replay_delivery(request: Request) -> Response:
    relay = _relay(request)
    body = await read_json_object(request)
    unknown = set(body) - {"force"}
    if unknown:
        raise InvalidInput(f"Unknown field(s): {', '.join(sorted(unknown))}.", code="invalid_query")
    delivery, count = await replays.replay_one(
        relay, request.path_params["delivery_id"], force=_force(request, body)
    )
    return JSONResponse({"replayed": count, "status": delivery["status"]}, status_code=202)


async def replay_deliveries(request: Request) -> Response:
    relay = _relay(request)
    body = await read_json_object(request)
    unknown = set(body) - {"subscriber_id", "since", "until", "force"}
    if unknown:
        raise InvalidInput(f"Unknown field(s): {', '.join(sorted(unknown))}.", code="invalid_query")
    filters = _delivery_filter(body, status="failed")
    if filters.subscriber_id is not None:
        await subscribers.require_enabled(relay.store, filters.subscriber_id)
    result = await replays.replay_many(relay, filters, None, force=_force(request, body))
    return JSONResponse(
        {"replayed": result.count, "skipped": replays.skipped(result.newer)}, status_code=202
    )


async def redeliver_event(request: Request) -> Response:
    relay = _relay(request)
    event_id = request.path_params["event_id"]
    body = await read_json_object(request)
    force = _force(request, body)
    event = await relay.store.get_event(event_id)
    if event is None:
        raise NotFound("No event with this id.")
    if event["relay"]["state"] != "emitted":
        raise InvalidInput("A superseded event is never delivered.", code="event_superseded")
    subscriber_id = body.get("subscriber_id")
    if subscriber_id is not None:
        if not isinstance(subscriber_id, str):
            raise InvalidInput("subscriber_id must be a string.", code="invalid_request")
        targets = [(await subscribers.require_enabled(relay.store, subscriber_id))]
    else:
        page = await relay.store.list_subscribers(None, 10_000)
        targets = [
            s for s in page.items if s.enabled and s.wants(event["data"]["provider"], event["type"])
        ]
    result = await relay.store.redeliver(
        event_id, [s.id for s in targets], time.time(), force=force
    )
    if subscriber_id is not None and subscriber_id in result.newer:
        raise replays.NewerEventDelivered(
            replays.redelivery_refusal(subscriber_id, result.newer[subscriber_id])
        )
    if result.count:
        relay.on_deliveries()
    return JSONResponse(
        {
            "deliveries": result.count,
            "skipped": replays.skipped(result.newer, key="subscriber_id"),
        },
        status_code=202,
    )


routes = [
    Route("/v1/subscribers", create_subscriber, methods=["POST"]),
    Route("/v1/subscribers", list_subscribers, methods=["GET"]),
    Route("/v1/subscribers/{subscriber_id}", get_subscriber, methods=["GET"]),
    Route("/v1/subscribers/{subscriber_id}", update_subscriber, methods=["PATCH"]),
    Route("/v1/subscribers/{subscriber_id}", delete_subscriber, methods=["DELETE"]),
    Route("/v1/subscribers/{subscriber_id}/rotate-secret", rotate_secret, methods=["POST"]),
    Route("/v1/deliveries", list_deliveries, methods=["GET"]),
    Route("/v1/deliveries/replay", replay_deliveries, methods=["POST"]),
    Route("/v1/deliveries/{delivery_id}", get_delivery, methods=["GET"]),
    Route("/v1/deliveries/{delivery_id}/replay", replay_delivery, methods=["POST"]),
    Route("/v1/events/{event_id}/redeliver", redeliver_event, methods=["POST"]),
]
