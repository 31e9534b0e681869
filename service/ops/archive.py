"""The console's archive: the failed archive jobs, each with a Retry button, and the pending
ones (waiting for their next run, or running) below them."""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import Response

from service import archive_retries
from service.clock import rfc3339
from service.ops import session as sessions
from service.ops.guards import Form, form_value
from service.ops.rendering import PAGE_ROWS, redirect_back, relay_of, render
from service.store.archive_sql import job_json

log = structlog.get_logger("service.ops")


async def archive_page(request: Request, session: sessions.Session) -> Response:
    store = relay_of(request).store
    failed = await store.list_archive_jobs("failed", None, PAGE_ROWS)
    pending = await store.list_archive_jobs("pending", None, PAGE_ROWS)
    return render(
        request,
        "archive.html",
        {
            "failed": [job_json(job) for job in failed.items],
            "pending": [job_json(job) for job in pending.items],
            "more_failed": failed.next_cursor is not None,
            "more_pending": pending.next_cursor is not None,
            "page_rows": PAGE_ROWS,
            "back": request.url.path,
        },
        session=session,
    )


async def retry(request: Request, _session: sessions.Session, form: Form) -> Response:
    event_id = request.path_params["event_id"]
    back = form_value(form, "back", "/ops/archive")
    job = await archive_retries.retry(relay_of(request), event_id)
    log.info("ops_archive_retry", event_id=event_id)
    return redirect_back(
        request,
        back,
        f"Retrying the archive of {event_id}: {job.status}, running again now until"
        f" {rfc3339(job.deadline_at)}.",
    )
