"""The archive worker: claims due archive jobs with a lease, runs them, until stopped.

An archive job is committed with its event (``Store.ingest``), so it is as durable as a
delivery: any process sharing the store may claim it, a job whose process died is claimed
again once its lease lapses, and a job is never run twice at once. A run can take minutes (a
2 GiB video), so its lease is short and renewed while it runs (``LEASE_SECONDS``,
``RENEW_SECONDS``); a run that loses its lease (a store outage longer than the lease) stops,
and its outcome is refused by the store if it got that far. Running a job again is harmless:
object keys are deterministic, so it overwrites the same objects.

At most ``RELAY_ARCHIVE_CONCURRENCY`` jobs run in one process, and one while intake is busy
(``service.intake_pace``): callbacks share the loop and the CPU, and are answered first.
``stop()`` stops claiming and cancels the runs in flight (a large download is not waited for),
freeing their leases: their jobs run again, here or in another replica.

Archived objects older than ``RELAY_ARCHIVE_RETENTION_DAYS`` are deleted once every
``RETENTION_INTERVAL`` (whole days: keys are dated, ``service.archive_media``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time

import structlog

from service import metrics
from service.archive_jobs import run_job
from service.archive_store import ArchiveStore
from service.archiver import Archived, ArchiveFailure, Archiver, OutputPlace
from service.errors import StorageUnavailable
from service.relay import Relay
from service.settings import ArchiveSettings
from service.store.records import ArchiveJob
from service.targets import TargetPolicy

log = structlog.get_logger("service.archive_worker")

#: A run's lease, and how often it is renewed while the run goes on.
LEASE_SECONDS = 60.0
RENEW_SECONDS = 15.0
#: How often an idle worker looks for due jobs when nothing wakes it.
IDLE_POLL_SECONDS = 1.0
RETENTION_INTERVAL = 6 * 3600.0


class LeaseLost(Exception):
    """The run's lease could not be renewed: another process may run the job now."""


class ArchiveWorker:
    def __init__(self, relay: Relay, store: ArchiveStore, settings: ArchiveSettings) -> None:
        self.relay = relay
        self.store = store
        self.settings = settings
        self.archiver = Archiver(store, settings, TargetPolicy.from_settings(relay.settings))
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._runs: dict[str, asyncio.Task[None]] = {}
        #: The lease token of each run in ``_runs``: ``stop()`` frees only these leases.
        self._leases: dict[str, str] = {}
        self._run_task: asyncio.Task[None] | None = None
        self._retention_at = 0.0

    def wake(self) -> None:
        """A job was committed: claim without waiting for the next look, unless intake is busy
        (then the next run's end, or the next look, claims it: no wake-up per callback)."""
        if not self.relay.intake_pace.busy:
            self._wakeup.set()

    async def start(self) -> None:
        if self.relay.store.exclusive:
            # One process owns this store: leases left by a crash can be freed at once.
            await self.relay.store.release_archive_leases(None)
        self.relay.on_archive = self.wake
        self._run_task = asyncio.create_task(self.run(), name="archive-worker")

    async def run(self) -> None:
        while not self._stopping:
            await self._claim()
            await self._apply_retention()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL_SECONDS):
                    await self._wakeup.wait()
            self._wakeup.clear()

    async def _claim(self) -> None:
        # Callbacks first: while intake is busy, one job at a time (they share the loop and
        # the CPU; measured, four jobs at once took a third off intake's rate).
        limit = 1 if self.relay.intake_pace.busy else self.settings.concurrency
        free = limit - len(self._runs)
        if free <= 0:
            return
        try:
            jobs = await self.relay.store.claim_archive_jobs(
                self.relay.clock(), free, LEASE_SECONDS
            )
        except StorageUnavailable as exc:
            log.warning("archive_claim_failed", error=exc.message)
            return
        except Exception:  # a bug must not stop every job for good
            log.exception("archive_claim_error")
            return
        for job in jobs:
            stale = self._runs.get(job.event_id)
            if stale is not None:
                # Its lease lapsed while it ran here (the store was away when it was due for
                # renewal) and this claim took the job again: that run can no longer record
                # its outcome, so it stops rather than download beside this one.
                stale.cancel()
            self._runs[job.event_id] = asyncio.create_task(self._run(job))
            self._leases[job.event_id] = job.lease_token or ""

    async def _run(self, job: ArchiveJob) -> None:
        started = time.perf_counter()
        run = asyncio.create_task(
            run_job(job, self.archiver, self.store.url_for, self.relay.clock, self.settings.timeout)
        )
        renewing = asyncio.create_task(self._renew(job, run))
        try:
            outcome = await run
            if not await self.relay.store.record_archive_outcome(outcome):
                log.warning("archive_outcome_refused", event_id=job.event_id)
                return
            earlier = {e["index"] for e in job.progress if e["state"] == "archived"}
            fresh = [e for e in outcome.progress if e["index"] not in earlier]
            result = outcome.status if outcome.finished else "retry"
            metrics.count_archive_run(result, time.perf_counter() - started, fresh)
            log.info(
                "archive_run",
                event_id=job.event_id,
                provider=job.provider,
                task_id=job.task_id,
                result=result,
                error=outcome.last_error,
            )
            if outcome.finished:
                self.relay.on_deliveries()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # stop(): the lease is freed there
            # Only the run was canceled: ``_renew`` found the lease lost.
            log.warning("archive_lease_lost", event_id=job.event_id)
        except StorageUnavailable as exc:
            # The lease lapses and the job runs again (its objects are overwritten, not doubled).
            log.warning("archive_outcome_unrecorded", event_id=job.event_id, error=exc.message)
        except Exception:
            # The lease is kept, not freed: the job runs again once it lapses, never at once,
            # so a job that always fails this way cannot spin.
            log.exception("archive_run_error", event_id=job.event_id)
        finally:
            renewing.cancel()
            run.cancel()
            if self._runs.get(job.event_id) is asyncio.current_task():  # not replaced since
                del self._runs[job.event_id]
                del self._leases[job.event_id]
            self._wakeup.set()

    async def _renew(self, job: ArchiveJob, run: asyncio.Task[object]) -> None:
        """Keep ``job`` leased while ``run`` goes on; cancel it if the lease is lost."""
        assert job.lease_token is not None  # noqa: S101 - a claimed job has one
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            until = self.relay.clock() + LEASE_SECONDS
            try:
                kept = await self.relay.store.extend_archive_lease(
                    job.event_id, job.lease_token, until
                )
            except StorageUnavailable:
                continue  # the lease still runs; try again
            if not kept:
                run.cancel()
                return

    async def _apply_retention(self) -> None:
        days = self.settings.retention_days
        now = self.relay.clock()
        if days is None or now - self._retention_at < RETENTION_INTERVAL:
            return
        self._retention_at = now
        cutoff = dt.datetime.fromtimestamp(now - days * 86_400, dt.UTC).date()
        try:
            deleted = await self.store.delete_days_before(cutoff)
        except Exception as exc:  # obstore's errors: the store is away; next round
            log.warning("archive_retention_failed", error=str(exc))
            return
        if deleted:
            log.info("archive_objects_deleted", objects=deleted, before=cutoff.isoformat())

    async def stop(self) -> None:
        """Stop claiming, cancel the runs in flight and free their leases."""
        self._stopping = True
        self._wakeup.set()
        if self._run_task is not None:
            await self._run_task
        running, leases = dict(self._runs), list(self._leases.items())
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        if leases:
            with contextlib.suppress(StorageUnavailable):
                await self.relay.store.release_archive_leases(leases)
        self.relay.on_archive = lambda: None
        await self.archiver.aclose()


class _NothingCopied:
    """The copier of a process that archives nothing: ``OverdueArchiveJobs`` runs jobs only
    past their deadline, where ``run_job`` tries no output."""

    async def archive(self, source_url: str, place: OutputPlace) -> Archived:
        raise ArchiveFailure("timeout", "the archive deadline passed before it was tried")


class OverdueArchiveJobs:
    """In a process without ``RELAY_ARCHIVE_URL``: ends archive jobs left past their deadline.

    Jobs are committed by whichever process received the callback; if archiving was turned off
    since, or only some replicas have it, no archive worker may ever claim them, and their
    events would wait for ever. So every process that delivers also claims the jobs that are
    ``GRACE_SECONDS`` past their deadline and not leased (a job an archive worker is running
    is leased) and ends them as ``failed``: the event goes out with the provider's URLs and
    ``data.archive`` saying that the deadline passed, and its deliveries start. Outputs an
    earlier run archived are not rewritten here: this process cannot say where they are.
    """

    GRACE_SECONDS = 60.0
    EVERY_SECONDS = 30.0

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def run(self) -> None:
        while True:
            try:
                await self.end_overdue()
            except StorageUnavailable as exc:
                log.warning("archive_overdue_failed", error=exc.message)
            except Exception:  # a bug must not stop the look for good, as in the other workers
                log.exception("archive_overdue_error")
            await asyncio.sleep(self.EVERY_SECONDS)

    async def end_overdue(self) -> int:
        """End the overdue jobs there are now; returns how many."""
        now = self.relay.clock()
        jobs = await self.relay.store.claim_archive_jobs(
            now, 100, LEASE_SECONDS, overdue_at=now - self.GRACE_SECONDS
        )
        for job in jobs:
            forgotten = dataclasses.replace(job, progress=[])
            outcome = await run_job(forgotten, _NothingCopied(), str, self.relay.clock)
            if await self.relay.store.record_archive_outcome(outcome):
                log.warning("archive_job_overdue", event_id=job.event_id, provider=job.provider)
                metrics.count_archive_run("failed", 0.0, outcome.progress)
        if jobs:
            self.relay.on_deliveries()
        return len(jobs)
