"""The delivery worker: claims due deliveries, attempts them, records what happened.

Concurrency is bounded overall (``concurrency`` deliveries leased at once) and per subscriber
(``per_subscriber`` requests in flight). The slots are shared among subscribers by
``service.fair_shares``: each contender holds at most its share and one share is kept free, so
one slow, dead or stalled subscriber (or many at once) never makes a healthy one wait.

A subscriber with a rate limit (``max_per_second``, ``service.pacing``) is paced: what a
claim brings for it waits here, leased but holding no slot, for its turn (a couple of seconds'
worth at most; the rest goes back to the store), and claims leave it out while it has some
waiting or its next turn has not come, so its backlog never takes a claim's room or a slot
from another subscriber.

The store's claim keeps per-task order. A lease covers an attempt; if this process dies, the
lease lapses and the delivery is attempted again (at least once). ``stop()`` stops claiming,
lets attempts in flight finish within the delivery timeout, and frees the leases of any that
did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import Sequence

import structlog

from service import metrics
from service.archive_worker import ArchiveWorker, OverdueArchiveJobs
from service.attempt_outcome import attempt_outcome
from service.clock import Clock, system_clock
from service.delivery import Attempt, Deliverer
from service.errors import StorageUnavailable
from service.fair_shares import FairShares
from service.pacing import Pacer
from service.relay import Relay
from service.retention import Retention, prune_forever
from service.store.base import Claim, Store
from service.targets import TargetPolicy

log = structlog.get_logger("service.worker")

#: The error an attempt is recorded with when the store refused its first record.
_UNRECORDABLE = "the store refused this attempt's record (see the relay's log)"

#: How often an idle worker looks for due retries when nothing wakes it.
IDLE_POLL_SECONDS = 0.1

#: Seconds of a paced subscriber's deliveries held leased, waiting for their turns.
PACED_WINDOW_SECONDS = 2.0


class DeliveryWorker:
    def __init__(
        self,
        store: Store,
        deliverer: Deliverer,
        retry_delays: Sequence[float],
        *,
        concurrency: int = 512,
        per_subscriber: int = 64,
        claim_batch: int = 256,
        clock: Clock = system_clock,
    ) -> None:
        self.store = store
        self.deliverer = deliverer
        self.retry_delays = tuple(retry_delays)
        self.concurrency = concurrency
        self.per_subscriber = per_subscriber
        self.claim_batch = claim_batch
        self.clock = clock
        # Claimed deliveries may wait for their subscriber's slot before their attempt starts.
        self.lease_seconds = 3 * deliverer.timeout + 10
        self.shares = FairShares(concurrency, per_subscriber, clock=clock)
        self.pacer = Pacer(clock)
        #: Paced subscribers' claimed deliveries waiting for their turn, with when claimed.
        self._paced: dict[str, deque[tuple[Claim, float]]] = {}
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self.last_claim_at = 0.0
        # (subscribers left out, when) of the last claim that found nothing: see ``_claim``.
        self._found_nothing: tuple[frozenset[str], float] | None = None
        #: True while ``run()`` claims (``/readyz`` reports a worker that stopped or died).
        self.running = False

    @property
    def in_flight(self) -> int:
        """Deliveries claimed and not yet recorded."""
        return len(self._tasks)

    def wake(self) -> None:
        """New deliveries are due: claim without waiting for the next poll."""
        self._found_nothing = None
        self._wakeup.set()

    async def run(self) -> None:
        """Claim and attempt until ``stop()``."""
        self.running = True
        try:
            while not self._stopping:
                if self._paced:
                    await self._start_paced()
                if await self._claim():
                    await asyncio.sleep(0)  # more may be due right away; let attempts start
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle_wait()):
                        await self._wakeup.wait()
                self._wakeup.clear()
        finally:
            self.running = False

    async def _claim(self) -> bool:
        """Claim a batch and start what its subscribers' shares allow; True when the store
        may hold more due deliveries that could start now."""
        limit = min(self.shares.free, self.claim_batch)
        if limit <= 0:
            return False
        saturated = self.shares.saturated()
        if self._paced or self.pacer.active:
            # Paced subscribers with deliveries waiting, or whose turn has not come, sit out.
            saturated |= self.pacer.waiting() | frozenset(self._paced)
        now = self.clock()
        if self._found_nothing is not None:
            # Every attempt that ends wakes the worker, but while the same subscribers are
            # saturated a claim leaving them out finds what the last one found: nothing, after
            # walking past all their pending deliveries (5 ms with 20,000 pending). New
            # deliveries (``wake``), a subscriber leaving the saturated set, or the next poll
            # make it worth asking again.
            left_out, at = self._found_nothing
            if saturated >= left_out and now - at < IDLE_POLL_SECONDS:
                return False
            self._found_nothing = None
        try:
            claims = await self.store.claim_due(now, limit, self.lease_seconds, saturated)
        except StorageUnavailable as exc:
            log.warning("claim_failed", error=exc.message)
            await asyncio.sleep(1)
            return False
        self.last_claim_at = now
        if not claims and saturated:
            self._found_nothing = (saturated, now)
        unpaced, surplus = self._hold_paced(claims, now)
        admission = self.shares.admit(unpaced)
        for claim in admission.started:
            self._start(claim)
        surplus += admission.surplus
        if surplus:
            with contextlib.suppress(StorageUnavailable):  # else their leases lapse
                await self.store.release_leases([claim.delivery_id for claim in surplus])
        if len(unpaced) < len(claims):
            # A paced subscriber's first one may start now; the others wait their turns.
            await self._start_paced()
        # A full batch: more may be due. What went back belongs to subscribers now saturated,
        # which the next claim leaves out, so claiming again at once cannot loop.
        return len(claims) == limit and self.shares.free > 0

    def _start(self, claim: Claim) -> None:
        self._tasks[claim.delivery_id] = asyncio.create_task(self._deliver(claim))

    def _hold_paced(self, claims: list[Claim], now: float) -> tuple[list[Claim], list[Claim]]:
        """``claims`` of subscribers without a rate limit, and the paced ones that go back to
        the store; the rest wait in ``_paced`` for their turns (``_start_paced``)."""
        unpaced: list[Claim] = []
        surplus: list[Claim] = []
        for claim in claims:
            rate = claim.max_per_second
            if not rate:
                unpaced.append(claim)
                continue
            waiting = self._paced.setdefault(claim.subscriber_id, deque())
            if len(waiting) < max(1, int(rate * PACED_WINDOW_SECONDS)):
                waiting.append((claim, now))
            else:
                surplus.append(claim)
        return unpaced, surplus

    async def _start_paced(self) -> None:
        """Start the paced deliveries whose turn has come and that their share allows; give
        back those that waited too long (their leases would soon lapse)."""
        stale: list[Claim] = []
        too_old = self.clock() - self.lease_seconds / 2
        for subscriber_id, waiting in list(self._paced.items()):
            while waiting and waiting[0][1] < too_old:
                stale.append(waiting.popleft()[0])
            while waiting and self.pacer.ready(subscriber_id):
                claim = waiting[0][0]
                if not self.shares.admit([claim]).started:
                    break  # no slot for it now: it keeps its place
                waiting.popleft()
                self.pacer.take(subscriber_id, claim.max_per_second or 1.0)
                self._start(claim)
            if not waiting:
                del self._paced[subscriber_id]
        if stale:
            with contextlib.suppress(StorageUnavailable):
                await self.store.release_leases([claim.delivery_id for claim in stale])

    def _idle_wait(self) -> float:
        """How long to wait for a wake-up: until the next poll, or a paced subscriber's turn
        (it has deliveries waiting, or may have some due in the store)."""
        turn = self.pacer.next_turn()
        if turn is None:
            return IDLE_POLL_SECONDS
        return min(IDLE_POLL_SECONDS, max(0.0, turn - self.clock()))

    def _slot(self, subscriber_id: str) -> asyncio.Semaphore:
        slot = self._slots.get(subscriber_id)
        if slot is None:
            slot = self._slots[subscriber_id] = asyncio.Semaphore(self.per_subscriber)
        return slot

    async def _deliver(self, claim: Claim) -> None:
        # This task's own context: every line about the attempt names what it is about.
        provider, _, task_id = claim.task_key.partition("/")
        structlog.contextvars.bind_contextvars(
            delivery_id=claim.delivery_id,
            event_id=claim.event_id,
            subscriber_id=claim.subscriber_id,
            provider=provider or None,
            task_id=task_id or None,
        )
        try:
            async with self._slot(claim.subscriber_id):
                attempt = await self.deliverer.attempt(claim)
            await self._record(claim, attempt)
        except Exception:
            # A bug, said with its traceback rather than left in a task nobody awaits; the
            # lease lapses and the delivery is attempted again.
            log.exception("delivery_error")
        finally:
            del self._tasks[claim.delivery_id]
            self.shares.release(claim.subscriber_id)
            if claim.subscriber_id not in self.shares.held:
                self._slots.pop(claim.subscriber_id, None)
            self._wakeup.set()

    async def _record(self, claim: Claim, attempt: Attempt) -> None:
        record = attempt_outcome(claim, attempt, self.retry_delays)
        metrics.count_attempt(record.outcome, attempt.latency_ms)
        metrics.count_subscriber_attempt(claim.subscriber_id, attempt.ok)
        fields = {
            "status_code": attempt.status_code,
            "outcome": record.outcome,
            "latency_ms": attempt.latency_ms,
        }
        if record.outcome == "succeeded":
            log.debug("delivery_attempt", **fields)
        else:
            log.info("delivery_attempt", error=attempt.error, **fields)
        if record.disable_subscriber:
            log.warning("subscriber_disabled", reason=record.disable_subscriber, **fields)
        for wait in (0.1, 0.5, 1.0, 2.0):
            try:
                await self.store.record_attempt(record)
                return
            except StorageUnavailable as exc:
                log.warning("record_attempt_failed", error=exc.message, **fields)
                await asyncio.sleep(wait)
            except Exception:
                # Not an outage: the store refused this one record (a bug, or text it cannot
                # hold). Said loudly, counted, and confined to this delivery: the record is
                # stored once more without the subscriber's text, so the delivery still moves
                # on instead of being re-sent at every lease expiry.
                log.exception("record_attempt_error", **fields)
                metrics.ATTEMPT_RECORD_ERRORS.inc()
                if record.response_excerpt is None and record.error == _UNRECORDABLE:
                    return
                record = dataclasses.replace(record, response_excerpt=None, error=_UNRECORDABLE)
        # The lease will lapse and the delivery be attempted again: at least once, never lost.

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; wait for attempts in flight, then free the leases of the rest."""
        self._stopping = True
        self._wakeup.set()
        held = [claim.delivery_id for waiting in self._paced.values() for claim, _ in waiting]
        self._paced.clear()
        if held:
            with contextlib.suppress(StorageUnavailable):
                await self.store.release_leases(held)
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace or self.deliverer.timeout + 2)
            unfinished = [d for d, t in self._tasks.items() if t in pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if unfinished:
                with contextlib.suppress(StorageUnavailable):
                    await self.store.release_leases(unfinished)


class BackgroundWork:
    """What runs beside (or instead of) the HTTP API: the delivery and watch workers, retention.

    ``relay serve`` starts it in the app's lifespan; ``relay worker`` runs it alone.
    """

    def __init__(self, relay: Relay) -> None:
        settings = relay.settings
        self.relay = relay
        self.deliverer = Deliverer(
            TargetPolicy.from_settings(settings),
            settings.delivery_timeout,
            clock=relay.clock,
            tracer=relay.tracer,
        )
        self.worker = DeliveryWorker(
            relay.store,
            self.deliverer,
            settings.retry_delays,
            concurrency=settings.delivery_concurrency,
            clock=relay.clock,
        )
        from service.watch_worker import WatchWorker

        self.watches = WatchWorker(relay)
        self.archive: ArchiveWorker | None = None
        self._overdue: asyncio.Task[None] | None = None
        if relay.archive is not None and settings.archive is not None:
            self.archive = ArchiveWorker(relay, relay.archive, settings.archive)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.relay.store.exclusive:
            # One process owns this store: leases left by a crash can be freed at once.
            await self.relay.store.release_leases(None)
        self.relay.on_deliveries = self.worker.wake
        await self.watches.start()
        if self.archive is not None:
            await self.archive.start()
        else:
            self._overdue = asyncio.create_task(
                OverdueArchiveJobs(self.relay).run(), name="overdue-archive-jobs"
            )
        self._tasks = [
            asyncio.create_task(self.worker.run(), name="delivery-worker"),
            asyncio.create_task(
                prune_forever(
                    self.relay.store,
                    Retention(
                        self.relay.settings.retention_days,
                        self.relay.settings.failed_retention_days,
                    ),
                    clock=self.relay.clock,
                ),
                name="retention",
            ),
        ]

    async def stop(self) -> None:
        """Stop claiming, let attempts in flight finish, free the rest's leases."""
        await self.watches.stop()  # first: its polls may still emit events to deliver
        if self.archive is not None:
            await self.archive.stop()  # its runs may still release deliveries
        if self._overdue is not None:
            self._overdue.cancel()
            await asyncio.gather(self._overdue, return_exceptions=True)
        delivery, retention = self._tasks
        retention.cancel()
        await self.worker.stop()
        await asyncio.gather(delivery, retention, return_exceptions=True)
        await self.deliverer.aclose()
