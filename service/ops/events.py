"""The console's events: the latest, filtered by provider, status, task (an event id typed
in the search box opens that event) or metadata (``user_id=u-42``), superseded ones and held
callbacks marked; and one event with its data, its outputs (archived or not, and its archive
job) and its deliveries."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.errors import RelayError
from service.events import STATUSES
from service.ops import session as sessions
from service.ops.list_filters import metadata_search, query_refusal
from service.ops.rendering import PAGE_ROWS, message, redirect, relay_of, render, render_list
from service.providers import PROVIDERS
from service.store.archive_sql import job_json
from service.store.base import DeliveryFilter, EventFilter
from service.store.records import MetadataFilter
from service.store.watch_model import Watch, WatchFilter

#: What the events page reads from its query.
EVENT_PARAMETERS = ("q", "provider", "status", "task_id", "meta")


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
        "meta": query.get("meta", ""),
    }
    error = query_refusal(query, EVENT_PARAMETERS)
    events: list[dict[str, Any]] = []
    held: list[Watch] = []
    metadata: MetadataFilter = ()
    if error is None and values["provider"] and values["provider"] not in PROVIDERS:
        error = f"Unknown provider {values['provider']!r}."
    elif error is None and values["status"] and values["status"] not in STATUSES:
        error = f"Unknown status {values['status']!r}."
    if error is None:
        try:
            metadata = metadata_search(values["meta"])
        except RelayError as exc:
            error = exc.message
    if error is None:
        found = await relay.store.list_events(
            EventFilter(
                provider=values["provider"] or None,
                task_id=values["task_id"] or None,
                status=values["status"] or None,
                metadata=metadata,
            ),
            None,
            PAGE_ROWS,
        )
        events = [json.loads(item) for item in found.items]
        # Terminal callbacks held until the provider's API confirms them are no events yet:
        # listed above the events, marked held (the watches page shows them whole).
        if not values["status"]:
            waiting = await relay.store.list_watches(
                WatchFilter(
                    held=True,
                    provider=values["provider"] or None,
                    task_id=values["task_id"] or None,
                    metadata=metadata,
                ),
                None,
                PAGE_ROWS,
            )
            held = waiting.items
    return render_list(
        request,
        "events.html",
        ("events", events),
        values,
        error,
        {"providers": sorted(PROVIDERS), "statuses": STATUSES, "held": held},
        session,
    )


async def event_page(request: Request, session: sessions.Session) -> Response:
    relay = relay_of(request)
    event = await relay.store.get_event(request.path_params["event_id"])
    if event is None:
        return message(request, "Not found", "No event with this id.", 404, session)
    found = await relay.store.list_deliveries(DeliveryFilter(event_id=event["id"]), None, 500)
    data = event.get("data") or {}
    job = await relay.store.get_archive_job(event["id"])
    outputs = data.get("outputs") or []
    # ``data.archive`` is there when the event went out with outputs not archived: their
    # failures, by the output's index (service.archive_jobs). An output archived since, by a
    # retry, carries its sha256 and is no longer a failure.
    failures = {
        f["index"]: f
        for f in (data.get("archive") or {}).get("failures", [])
        if f["index"] < len(outputs) and "sha256" not in outputs[f["index"]]
    }
    return render(
        request,
        "event.html",
        {
            "e": event,
            "data": data,
            "raw": data.get("raw"),
            "deliveries": found.items,
            "outputs": outputs,
            "failures": failures,
            "job": None if job is None else job_json(job),
            "back": request.url.path,
        },
        session=session,
    )
