"""The archive jobs' statements, the same for both stores (``service.store.records.ArchiveJob``).

SQLite and PostgreSQL speak the same SQL here but for the parameter mark, so each statement is
written once with ``{m}`` and ``for_mark`` fills it in; the stores run them in their own
transactions (``sqlite_archive``, ``postgres_archive``). PostgreSQL's claim adds
``FOR UPDATE SKIP LOCKED`` so that replicas claiming at once never take the same job.
"""

from __future__ import annotations

import json
from typing import Any

from service.clock import rfc3339
from service.store.records import ArchiveJob, ArchiveOutcome

ARCHIVE_COLUMNS = (
    "event_id, provider, task_id, status, attempts, next_attempt_at, deadline_at, progress,"
    " last_error, created_at, updated_at"
)

#: Due jobs, earliest first; ``{lock}`` is PostgreSQL's row lock (empty for SQLite).
CLAIM = (
    "SELECT seq FROM archive_jobs WHERE status = 'pending' AND next_attempt_at <= {m}"
    " AND (lease_until IS NULL OR lease_until <= {m}) AND deadline_at <= {m}"
    " ORDER BY next_attempt_at, seq LIMIT {m}"
    "{lock}"
)
LEASE = "UPDATE archive_jobs SET lease_until = {m}, lease_token = {m} WHERE seq = {m}"
CLAIMED = (
    f"SELECT {', '.join('a.' + c.strip() for c in ARCHIVE_COLUMNS.split(','))}, e.body"
    " FROM archive_jobs a JOIN events e ON e.id = a.event_id WHERE a.seq = {m}"
)
EXTEND = (
    "UPDATE archive_jobs SET lease_until = {m} WHERE event_id = {m} AND lease_token = {m}"
    " AND status = 'pending'"
)
#: A run's outcome; only the run holding the lease may write it.
RECORD = (
    "UPDATE archive_jobs SET status = {m}, attempts = attempts + 1, next_attempt_at = {m},"
    " progress = {m}, last_error = {m}, lease_until = NULL, lease_token = NULL, updated_at = {m}"
    " WHERE event_id = {m} AND lease_token = {m} AND status = 'pending'"
)
REWRITE_EVENT = "UPDATE events SET body = {m} WHERE id = {m}"
#: The event's deliveries, held while it was archived, are due now.
RELEASE_DELIVERIES = (
    "UPDATE deliveries SET next_attempt_at = {m}, updated_at = {m}"
    " WHERE event_id = {m} AND status = 'pending' AND next_attempt_at IS NULL"
)
GET = f"SELECT {ARCHIVE_COLUMNS} FROM archive_jobs WHERE event_id = {{m}}"
LIST = f"SELECT seq, {ARCHIVE_COLUMNS} FROM archive_jobs"
#: An operator's retry: a failed job runs again with a new deadline; the outputs it archived
#: stay archived (the run tries the others).
RETRY = (
    "UPDATE archive_jobs SET status = 'pending', next_attempt_at = {m}, deadline_at = {m},"
    " last_error = NULL, lease_until = NULL, lease_token = NULL,"
    " updated_at = {m} WHERE event_id = {m} AND status = 'failed'"
)
COUNTS = (
    "SELECT status, count(*), min(created_at) FROM archive_jobs"
    " WHERE status IN ('pending', 'failed') GROUP BY status"
)
RELEASE_LEASES = "UPDATE archive_jobs SET lease_until = NULL, lease_token = NULL"
#: A process's own leases at shutdown (by token: a lease another replica took since stays).
RELEASE_LEASE = RELEASE_LEASES + " WHERE event_id = {m} AND lease_token = {m}"


def for_mark(statement: str, mark: str, lock: str = "") -> str:
    """``statement`` with its parameter marks (and row lock) filled in."""
    return statement.replace("{m}", mark).replace("{lock}", lock)


def job_from_row(row: tuple[Any, ...], lease_token: str | None = None) -> ArchiveJob:
    """An ``ARCHIVE_COLUMNS`` row (then the event's body, when a claim selected it)."""
    return ArchiveJob(
        event_id=row[0],
        provider=row[1],
        task_id=row[2],
        status=row[3],
        attempts=row[4],
        next_attempt_at=row[5],
        deadline_at=row[6],
        progress=json.loads(row[7]),
        last_error=row[8],
        created_at=row[9],
        updated_at=row[10],
        body=row[11] if len(row) > 11 else None,
        lease_token=lease_token,
    )


def record_params(outcome: ArchiveOutcome) -> tuple[Any, ...]:
    """``RECORD``'s parameters."""
    return (
        outcome.status if outcome.finished else "pending",
        None if outcome.finished else outcome.next_attempt_at,
        json.dumps(outcome.progress),
        outcome.last_error,
        outcome.at,
        outcome.event_id,
        outcome.lease_token,
    )


def counts_json(rows: list[tuple[Any, ...]], now: float) -> dict[str, Any]:
    """``Store.archive_counts`` from ``COUNTS``'s rows."""
    by_status = {row[0]: (row[1], row[2]) for row in rows}
    pending, oldest = by_status.get("pending", (0, None))
    return {
        "pending": pending,
        "failed": by_status.get("failed", (0, None))[0],
        "oldest_pending_seconds": None if oldest is None else max(0.0, now - oldest),
    }


def job_json(job: ArchiveJob) -> dict[str, Any]:
    """An archive job as the admin API shows it."""
    return {
        "event_id": job.event_id,
        "provider": job.provider,
        "task_id": job.task_id,
        "status": job.status,
        "attempts": job.attempts,
        "next_attempt_at": (
            rfc3339(job.next_attempt_at)
            if job.status == "pending" and job.next_attempt_at is not None
            else None
        ),
        "deadline_at": rfc3339(job.deadline_at),
        "outputs": job.progress,
        "last_error": job.last_error,
        "created_at": rfc3339(job.created_at),
        "updated_at": rfc3339(job.updated_at),
    }
