"""Admin API: watches (register, list, show, cancel, resolve a conflict, decide a suspect).

Held and suspect callbacks are listed here, on the watches that hold them, rather than under a
resource of their own: ``?held=true`` (awaiting confirmation), ``?suspect=true`` (ended
unconfirmed, decided or not), ``?suspect=undecided`` (those an operator still has to release
or dismiss); ``?flag=unknown_status`` lists active watches whose provider answers a status
word the relay does not know. Each shows ``held_callback`` (the body as received; a listing
shows its first 16 KiB), ``last_answer`` (the API's) and ``suspect`` (the reason, the
decision).
"""

from __future__ import annotations

from starlette.responses import Response

from service import suspects, watch_requests
from service.errors import NotFound
from service.http.query import metadata_pairs
from service.http.responses import JSONResponse
from service.operations import NO_SUCH, Call, NoBody, NoQuery, operation
from service.shapes.base import present
from service.shapes.watches import (
    ConflictResolution,
    Dismissed,
    NewWatch,
    Released,
    Watch,
    WatchPage,
    WatchQuery,
)
from service.store.budget import BudgetState
from service.store.watch_model import WatchFilter

TAG = "watches"


@operation(
    "POST",
    "/watches",
    tag=TAG,
    scope="mint",
    summary="Watch a task: poll its provider's status API until it ends",
    success=(201, Watch, "Watching."),
    errors={
        400: "`invalid_watch`, `invalid_provider`, `invalid_task_id`, `invalid_metadata`, "
        "`invalid_deadline`, `invalid_poll_after`.",
        404: "`unknown_provider`.",
        409: "`watch_exists`: the task has an active watch.",
        422: "`provider_not_configured`: no API key for its status API.",
    },
    idempotent=True,
)
async def create_watch(call: Call[NoQuery, NewWatch]) -> Response:
    watch = await watch_requests.register_watch(call.relay, call.body)
    return JSONResponse(watch_requests.shown(watch), status_code=201)


@operation(
    "GET",
    "/watches",
    tag=TAG,
    scope="read",
    summary="List watches, newest first",
    success=(200, WatchPage, "A page of watches."),
)
async def list_watches(call: Call[WatchQuery, NoBody]) -> Response:
    relay, query = call.relay, call.query
    page = await relay.store.list_watches(
        WatchFilter(
            state=present(query.state),
            provider=present(query.provider),
            task_id=present(query.task_id),
            suspect=query.suspect == "true",
            undecided=query.suspect == "undecided",
            held=query.held,
            flagged=query.flag == "unknown_status",
            metadata=metadata_pairs(present(query.metadata)),
        ),
        present(query.cursor),
        query.limit,
    )
    budgets: dict[str, BudgetState] = {}  # one look at each provider's budget per page
    items = [await watch_requests.view(relay, w, budgets, whole=False) for w in page.items]
    return JSONResponse(WatchPage(items=items, next_cursor=page.next_cursor))


@operation(
    "GET",
    "/watches/{watch_id}",
    tag=TAG,
    scope="read",
    summary="One watch",
    success=(200, Watch, "The watch."),
    errors=NO_SUCH,
)
async def get_watch(call: Call[NoQuery, NoBody]) -> Response:
    watch = await call.relay.store.get_watch(call.path("watch_id"))
    if watch is None:
        raise NotFound("No watch with this id.")
    return JSONResponse(await watch_requests.view(call.relay, watch))


@operation(
    "DELETE",
    "/watches/{watch_id}",
    tag=TAG,
    scope="mint",
    summary="Cancel an active watch",
    success=(200, Watch, "The canceled watch."),
    errors={**NO_SUCH, 409: "`watch_not_active`."},
)
async def cancel_watch(call: Call[NoQuery, NoBody]) -> Response:
    watch = await watch_requests.cancel_watch(call.relay, call.path("watch_id"))
    return JSONResponse(watch_requests.shown(watch))


@operation(
    "POST",
    "/watches/{watch_id}/resolve",
    tag=TAG,
    scope="operate",
    summary="Resolve an attribution conflict: whose callback URL the result is for",
    success=(200, Watch, "Resolved: the watch polls at once."),
    errors={
        **NO_SUCH,
        400: "`invalid_url_id`.",
        409: "`no_conflict`: the watch is not waiting for this.",
    },
)
async def resolve_conflict(call: Call[NoQuery, ConflictResolution]) -> Response:
    relay = call.relay
    watch = await watch_requests.resolve_conflict(relay, call.path("watch_id"), call.body.url_id)
    return JSONResponse(await watch_requests.view(relay, watch))


@operation(
    "POST",
    "/watches/{watch_id}/release",
    tag=TAG,
    scope="operate",
    summary="Release a suspect callback: forward it as received, once",
    success=(200, Released, "Released, recorded on the watch (suspect.decision)."),
    errors={
        **NO_SUCH,
        409: "`not_suspect`: nothing to decide (no suspect callback kept, or still awaiting "
        "confirmation); `already_decided`.",
    },
)
async def release_suspect(call: Call[NoQuery, NoBody]) -> Response:
    relay = call.relay
    decided = await suspects.decide(relay, call.path("watch_id"), "released", "admin_api")
    result = decided.result
    return JSONResponse(
        Released(
            watch=await watch_requests.view(relay, decided.watch),
            outcome=None if result is None else result.outcome,
            event_id=None if result is None else result.event_id,
        )
    )


@operation(
    "POST",
    "/watches/{watch_id}/dismiss",
    tag=TAG,
    scope="operate",
    summary="Dismiss a suspect callback: nothing is emitted, the choice is recorded",
    success=(200, Dismissed, "Dismissed, recorded on the watch (suspect.decision)."),
    errors={**NO_SUCH, 409: "`not_suspect`; `already_decided`."},
)
async def dismiss_suspect(call: Call[NoQuery, NoBody]) -> Response:
    relay = call.relay
    decided = await suspects.decide(relay, call.path("watch_id"), "dismissed", "admin_api")
    return JSONResponse(Dismissed(watch=await watch_requests.view(relay, decided.watch)))


operations = [
    create_watch,
    list_watches,
    get_watch,
    cancel_watch,
    resolve_conflict,
    release_suspect,
    dismiss_suspect,
]
