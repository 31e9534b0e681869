"""The console's events: the latest, filtered by provider, status or task (an event id typed
in the search box opens that event), and one event with its data and its deliveries."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.events import STATUSES
from service.ops import session as sessions
from service.ops.rendering import PAGE_ROWS, message, redirect, relay_of, render
from service.providers import PROVIDERS
from service.store.base import DeliveryFilter, EventFilter


async def events_page(request: Request, session: sessions.Session) -> Response:
    relay = relay_of(request)
    query = request.query_params
    wanted = query.get("q", "").strip()
    if wanted.startswith("evt_"):
        return redirect(f"/ops/events/{wanted}")
    values = {
        "provider": query.get("provider", ""),
        "status": query.get("status", ""),
        "task_id": query.get("task_id", "") or wanted,
    }
    error = None
    events: list[dict[str, Any]] = []
    if values["provider"] and values["provider"] not in PROVIDERS:
        error = f"Unknown provider {values['provider']!r}."
    elif values["status"] and values["status"] not in STATUSES:
        error = f"Unknown status {values['status']!r}."
    else:
        found = await relay.store.list_events(
            EventFilter(
                provider=values["provider"] or None,
                task_id=values["task_id"] or None,
                status=values["status"] or None,
            ),
            None,
            PAGE_ROWS,
        )
        events = [json.loads(item) for item in found.items]
    return render(
        request,
        "events.html",
        {
            "events": events,
            "filters": values,
            "error": error,
            "more": len(events) == PAGE_ROWS,
            "page_rows": PAGE_ROWS,
            "providers": sorted(PROVIDERS),
            "statuses": STATUSES,
        },
        status_code=400 if error else 200,
        session=session,
    )


async def event_page(request: Request, session: sessions.Session) -> Response:
    relay = relay_of(request)
    event = await relay.store.get_event(request.path_params["event_id"])
    if event is None:
        return message(request, "Not found", "No event with this id.", 404, session)
    found = await relay.store.list_deliveries(DeliveryFilter(event_id=event["id"]), None, 500)
    data = event.get("data") or {}
    return render(
        request,
        "event.html",
        {
            "e": event,
            "data": data,
            "raw": data.get("raw"),
            "deliveries": found.items,
            "back": request.url.path,
        },
        session=session,
    )
