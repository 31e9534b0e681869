"""Admin API: archive jobs (find them, show one, retry a failed one).

An event's archive job exists when ``RELAY_ARCHIVE_URL`` was set as it was accepted
(``service.archive_jobs``); with archiving off the list shows what the store still holds.
"""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from service import archive_retries
from service.errors import NotFound
from service.http.responses import JSONResponse
from service.operations import NO_SUCH, Call, NoBody, NoQuery, operation
from service.shapes.archive import ArchiveJob, ArchiveJobPage, ArchiveJobQuery
from service.shapes.base import present
from service.store.archive_sql import job_json

TAG = "archive"


@operation(
    "GET",
    "/archive-jobs",
    tag=TAG,
    scope="read",
    summary="List archive jobs, newest first",
    success=(200, ArchiveJobPage, "A page of archive jobs."),
)
async def list_archive_jobs(call: Call[ArchiveJobQuery, NoBody]) -> Response:
    query = call.query
    page = await call.relay.store.list_archive_jobs(
        present(query.status), present(query.cursor), query.limit
    )
    items = [job_json(job) for job in page.items]
    return JSONResponse(
        msgspec.convert({"items": items, "next_cursor": page.next_cursor}, ArchiveJobPage)
    )


@operation(
    "GET",
    "/archive-jobs/{event_id}",
    tag=TAG,
    scope="read",
    summary="The archive job of one event",
    success=(200, ArchiveJob, "The job."),
    errors=NO_SUCH,
)
async def get_archive_job(call: Call[NoQuery, NoBody]) -> Response:
    job = await call.relay.store.get_archive_job(call.path("event_id"))
    if job is None:
        raise NotFound("No archive job for this event.")
    return JSONResponse(msgspec.convert(job_json(job), ArchiveJob))


@operation(
    "POST",
    "/archive-jobs/{event_id}/retry",
    tag=TAG,
    scope="operate",
    summary="Run a failed archive job again, from scratch, with a new deadline",
    description="The job becomes pending, due now, until RELAY_ARCHIVE_DEADLINE from now. Its "
    "event has already gone out: a retry fills the archive and rewrites the stored event, it "
    "does not send the event again.",
    success=(200, ArchiveJob, "The job, pending again."),
    errors={**NO_SUCH, 409: "`archive_job_not_failed`: only a failed job is retried."},
)
async def retry_archive_job(call: Call[NoQuery, NoBody]) -> Response:
    job = await archive_retries.retry(call.relay, call.path("event_id"))
    return JSONResponse(msgspec.convert(job_json(job), ArchiveJob))


operations = [list_archive_jobs, get_archive_job, retry_archive_job]
