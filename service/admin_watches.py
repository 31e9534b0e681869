"""Admin API for watches (bearer ``RELAY_ADMIN_TOKEN``): register, list, show, cancel.

POST   /v1/watches       {"provider", "task_id", "metadata"?, "deadline_seconds"?,
                          "poll_after_seconds"?}                   -> 201, the watch
GET    /v1/watches       ?state=&provider=&task_id=&suspect=true&cursor=&limit=
                                                   -> {"items", "next_cursor"}
GET    /v1/watches/{id}                                            -> the watch
DELETE /v1/watches/{id}                                            -> the canceled watch
POST   /v1/watches/{id}/resolve {"url_id": "..." | null}            -> the resolved watch
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import watches
from service.errors import InvalidInput, NotFound
from service.http import JSONResponse, parse_limit, read_json_object, require_admin
from service.relay import Relay
from service.store.budget import BudgetState
from service.store.watch_model import WATCH_STATES, WatchFilter


def _relay(request: Request) -> Relay:
    require_admin(request)
    return request.app.state.relay  # type: ignore[no-any-return]


async def create_watch(request: Request) -> Response:
    relay = _relay(request)
    watch = await watches.create_watch(relay, await read_json_object(request))
    return JSONResponse(watches.watch_json(watch), status_code=201)


async def list_watches(request: Request) -> Response:
    relay = _relay(request)
    query = request.query_params
    state = query.get("state")
    if state is not None and state not in WATCH_STATES:
        raise InvalidInput(f"state must be one of {', '.join(WATCH_STATES)}.", code="invalid_query")
    suspect = query.get("suspect", "false")
    if suspect not in ("true", "false"):
        raise InvalidInput("suspect must be true or false.", code="invalid_query")
    page = await relay.store.list_watches(
        WatchFilter(
            state=state,
            provider=query.get("provider"),
            task_id=query.get("task_id"),
            suspect=suspect == "true",
        ),
        query.get("cursor"),
        parse_limit(query.get("limit")),
    )
    budgets: dict[str, BudgetState] = {}  # one look at each provider's budget per page
    return JSONResponse(
        {
            "items": [await watches.watch_view(relay, w, budgets) for w in page.items],
            "next_cursor": page.next_cursor,
        }
    )


async def get_watch(request: Request) -> Response:
    relay = _relay(request)
    watch = await relay.store.get_watch(request.path_params["watch_id"])
    if watch is None:
        raise NotFound("No watch with this id.")
    return JSONResponse(await watches.watch_view(relay, watch))


async def cancel_watch(request: Request) -> Response:
    relay = _relay(request)
    watch = await watches.cancel_watch(relay, request.path_params["watch_id"])
    return JSONResponse(watches.watch_json(watch))


async def resolve_conflict(request: Request) -> Response:
    relay = _relay(request)
    body = await read_json_object(request)
    watch = await watches.resolve_conflict(relay, request.path_params["watch_id"], body)
    return JSONResponse(await watches.watch_view(relay, watch))


routes = [
    Route("/v1/watches", create_watch, methods=["POST"]),
    Route("/v1/watches", list_watches, methods=["GET"]),
    Route("/v1/watches/{watch_id}", get_watch, methods=["GET"]),
    Route("/v1/watches/{watch_id}", cancel_watch, methods=["DELETE"]),
    Route("/v1/watches/{watch_id}/resolve", resolve_conflict, methods=["POST"]),
]
