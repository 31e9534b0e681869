"""Admin API for watches (bearer ``RELAY_ADMIN_TOKEN``): register, list, show, cancel.

POST   /v1/watches       {"provider", "task_id", "metadata"?, "deadline_seconds"?,
                          "poll_after_seconds"?}                   -> 201, the watch
GET    /v1/watches       ?state=&provider=&task_id=&suspect=true|undecided&held=true
                         &flag=unknown_status&cursor=&limit=
                                                   -> {"items", "next_cursor"}
GET    /v1/watches/{id}                                            -> the watch
DELETE /v1/watches/{id}                                            -> the canceled watch
POST   /v1/watches/{id}/resolve {"url_id": "..." | null}            -> the resolved watch
POST   /v1/watches/{id}/release   -> {"watch", "outcome", "event_id"}: the suspect callback
                                     forwarded as received (service.suspects)
POST   /v1/watches/{id}/dismiss   -> {"watch"}: the suspect callback dropped, recorded

Held and suspect callbacks are listed here, on the watches that hold them, rather than under a
resource of their own: ``?held=true`` (awaiting confirmation), ``?suspect=true`` (ended
unconfirmed, decided or not), ``?suspect=undecided`` (those an operator still has to release
or dismiss); ``?flag=unknown_status`` lists active watches whose provider answers a status
word the relay does not know. Each shows ``held_callback`` (the body as received; a listing
shows its first 16 KiB), ``last_answer`` (the API's) and ``suspect`` (the reason, the
decision).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import suspects, watch_requests
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
    watch = await watch_requests.create_watch(relay, await read_json_object(request))
    return JSONResponse(watch_requests.watch_json(watch), status_code=201)


async def list_watches(request: Request) -> Response:
    relay = _relay(request)
    query = request.query_params
    state = query.get("state")
    if state is not None and state not in WATCH_STATES:
        raise InvalidInput(f"state must be one of {', '.join(WATCH_STATES)}.", code="invalid_query")
    suspect = query.get("suspect", "false")
    if suspect not in ("true", "false", "undecided"):
        raise InvalidInput("suspect must be true, false or undecided.", code="invalid_query")
    held = query.get("held", "false")
    flag = query.get("flag")
    if held not in ("true", "false"):
        raise InvalidInput("held must be true or false.", code="invalid_query")
    if flag not in (None, "unknown_status"):
        raise InvalidInput("flag must be unknown_status.", code="invalid_query")
    page = await relay.store.list_watches(
        WatchFilter(
            state=state,
            provider=query.get("provider"),
            task_id=query.get("task_id"),
            suspect=suspect == "true",
            undecided=suspect == "undecided",
            held=held == "true",
            flagged=flag == "unknown_status",
        ),
        query.get("cursor"),
        parse_limit(query.get("limit")),
    )
    budgets: dict[str, BudgetState] = {}  # one look at each provider's budget per page
    return JSONResponse(
        {
            "items": [
                await watch_requests.watch_view(relay, w, budgets, whole=False) for w in page.items
            ],
            "next_cursor": page.next_cursor,
        }
    )


async def get_watch(request: Request) -> Response:
    relay = _relay(request)
    watch = await relay.store.get_watch(request.path_params["watch_id"])
    if watch is None:
        raise NotFound("No watch with this id.")
    return JSONResponse(await watch_requests.watch_view(relay, watch))


async def cancel_watch(request: Request) -> Response:
    relay = _relay(request)
    watch = await watch_requests.cancel_watch(relay, request.path_params["watch_id"])
    return JSONResponse(watch_requests.watch_json(watch))


async def resolve_conflict(request: Request) -> Response:
    relay = _relay(request)
    body = await read_json_object(request)
    watch = await watch_requests.resolve_conflict(relay, request.path_params["watch_id"], body)
    return JSONResponse(await watch_requests.watch_view(relay, watch))


async def release_suspect(request: Request) -> Response:
    relay = _relay(request)
    decided = await suspects.decide(relay, request.path_params["watch_id"], "released", "admin_api")
    result = decided.result
    return JSONResponse(
        {
            "watch": await watch_requests.watch_view(relay, decided.watch),
            "outcome": None if result is None else result.outcome,
            "event_id": None if result is None else result.event_id,
        }
    )


async def dismiss_suspect(request: Request) -> Response:
    relay = _relay(request)
    decided = await suspects.decide(
        relay, request.path_params["watch_id"], "dismissed", "admin_api"
    )
    return JSONResponse({"watch": await watch_requests.watch_view(relay, decided.watch)})


routes = [
    Route("/v1/watches", create_watch, methods=["POST"]),
    Route("/v1/watches", list_watches, methods=["GET"]),
    Route("/v1/watches/{watch_id}", get_watch, methods=["GET"]),
    Route("/v1/watches/{watch_id}", cancel_watch, methods=["DELETE"]),
    Route("/v1/watches/{watch_id}/resolve", resolve_conflict, methods=["POST"]),
    Route("/v1/watches/{watch_id}/release", release_suspect, methods=["POST"]),
    Route("/v1/watches/{watch_id}/dismiss", dismiss_suspect, methods=["POST"]),
]
