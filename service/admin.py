"""The admin API under ``/v1`` (bearer ``RELAY_ADMIN_TOKEN``): callback URLs and events."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.errors import InvalidInput, NotFound
from service.events import STATUSES
from service.http import (
    JSONResponse,
    page_response,
    parse_limit,
    parse_time,
    read_json_object,
    require_admin,
)
from service.relay import Relay
from service.store.base import EventFilter


def _relay(request: Request) -> Relay:
    require_admin(request)
    return request.app.state.relay  # type: ignore[no-any-return]


async def create_callback_url(request: Request) -> Response:
    relay = _relay(request)
    body = await read_json_object(request)
    provider = body.get("provider")
    if not isinstance(provider, str):
        raise InvalidInput('provider is required (e.g. "evolink").', code="invalid_provider")
    minted = await relay.mint_callback_url(
        provider, body.get("metadata"), body.get("ttl_seconds"), body.get("reusable", False)
    )
    return JSONResponse(minted, status_code=201)


async def list_events(request: Request) -> Response:
    relay = _relay(request)
    query = request.query_params
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}.", code="invalid_query")
    page = await relay.store.list_events(
        EventFilter(
            provider=query.get("provider"),
            task_id=query.get("task_id"),
            status=status,
            since=parse_time(query.get("since"), "since"),
        ),
        query.get("cursor"),
        parse_limit(query.get("limit")),
    )
    return page_response(page.items, page.next_cursor)


async def get_event(request: Request) -> Response:
    relay = _relay(request)
    event = await relay.store.get_event(request.path_params["event_id"])
    if event is None:
        raise NotFound("No event with this id.")
    return JSONResponse(event)


async def get_event_raw(request: Request) -> Response:
    """The body an event was made from, byte for byte (``data.raw`` may leave it out)."""
    relay = _relay(request)
    event_id = request.path_params["event_id"]
    raw = None if "\x00" in event_id else await relay.store.get_event_raw(event_id)
    if raw is None:
        raise NotFound("No event with this id.")
    return Response(raw, media_type="application/json")


routes = [
    Route("/v1/callback-urls", create_callback_url, methods=["POST"]),
    Route("/v1/events", list_events, methods=["GET"]),
    Route("/v1/events/{event_id}", get_event, methods=["GET"]),
    Route("/v1/events/{event_id}/raw", get_event_raw, methods=["GET"]),
]
