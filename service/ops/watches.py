"""What waits for an operator among the watches: suspect callbacks (release or dismiss them),
callbacks still awaiting confirmation, and watches whose provider answers a status word the
relay does not know."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service import suspects, watch_requests
from service.ops import session as sessions
from service.ops.guards import Form, form_value
from service.ops.rendering import PAGE_ROWS, redirect_back, relay_of, render
from service.store.watch_model import WatchFilter


async def watches_page(request: Request, session: sessions.Session) -> Response:
    relay = relay_of(request)

    async def listed(wanted: WatchFilter) -> list[dict[str, Any]]:
        found = await relay.store.list_watches(wanted, None, PAGE_ROWS)
        return [watch_requests.watch_json(w, whole=False) for w in found.items]

    return render(
        request,
        "watches.html",
        {
            "suspect": await listed(WatchFilter(suspect=True)),
            "held": await listed(WatchFilter(held=True)),
            "flagged": await listed(WatchFilter(flagged=True)),
            "page_rows": PAGE_ROWS,
            "back": request.url.path,
        },
        session=session,
    )


async def _decide(request: Request, form: Form, decision: str) -> Response:
    watch_id = request.path_params["watch_id"]
    decided = await suspects.decide(relay_of(request), watch_id, decision, "console")
    back = form_value(form, "back", "/ops/watches")
    if decided.result is None:
        return redirect_back(request, back, f"Dismissed the suspect callback of {watch_id}.")
    outcome = decided.result.outcome
    text = (
        f"Released the suspect callback of {watch_id}: event {decided.result.event_id}."
        if outcome == "accepted"
        else f"Released the suspect callback of {watch_id}; it was {outcome} (not emitted again)."
    )
    return redirect_back(request, back, text)


async def release(request: Request, _session: sessions.Session, form: Form) -> Response:
    return await _decide(request, form, "released")


async def dismiss(request: Request, _session: sessions.Session, form: Form) -> Response:
    return await _decide(request, form, "dismissed")
