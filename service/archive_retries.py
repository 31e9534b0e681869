"""An operator's retry of a failed archive job (the admin API, console and CLI).

A failed job (``service.archive_jobs``: its deadline passed, or an output failed for good)
runs again from scratch: due now, with a new deadline of ``RELAY_ARCHIVE_DEADLINE`` from now,
and the archive worker is woken. The event it belongs to has already gone out (a job ends
before its deliveries start), so a retry only fills the archive and rewrites the stored event:
subscribers are not sent it again (``relay replay`` / redeliver do that, if wanted).

Only a failed job is retried: an unknown event is ``NotFound``, a job in any other status is
``ArchiveJobNotFailed`` (409) and is left as it is.
"""

from __future__ import annotations

from service.errors import Conflict, NotFound
from service.relay import Relay
from service.settings import ArchiveSettings
from service.store.records import ArchiveJob


class ArchiveJobNotFailed(Conflict):
    """Only a failed archive job is retried."""

    code = "archive_job_not_failed"


def deadline_seconds(relay: Relay) -> float:
    """How long a retried job may run: ``RELAY_ARCHIVE_DEADLINE``; with archiving off (a CLI
    without ``RELAY_ARCHIVE_URL``), its default, for when a relay that archives runs it."""
    archive = relay.settings.archive
    return ArchiveSettings.deadline if archive is None else archive.deadline


async def retry(relay: Relay, event_id: str) -> ArchiveJob:
    """Retry the failed archive job of ``event_id``; the job as it is now."""
    now = relay.clock()
    deadline_at = now + deadline_seconds(relay)
    job = await relay.store.retry_archive_job(event_id, now, deadline_at)
    if job is None:
        raise NotFound(f"No archive job for {event_id}.")
    # The store changes a failed job only, and reads it back in the same transaction: the job
    # carries this retry's stamps exactly when this retry is what made it pending.
    if not (job.status == "pending" and job.updated_at == now and job.deadline_at == deadline_at):
        raise ArchiveJobNotFailed(
            f"The archive job of {event_id} is {job.status}, not failed: nothing to retry."
        )
    relay.on_archive()
    return job
