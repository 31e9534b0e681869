"""The delivery worker: claims due deliveries, attempts them, records what happened.

Concurrency is bounded overall (``concurrency`` deliveries leased at once) and per subscriber
(``per_subscriber`` requests in flight; a saturated subscriber is left out of the next claim),
so one slow or dead subscriber never delays the others. Slots are also shared fairly among
many stalled ones: while several subscribers have deliveries leased, none may hold more than
``concurrency // (subscribers + 1)`` (a claim's surplus is released at once). So however many
subscribers hang until the timeout, the slots they hold leave room for a healthy one.

The store's claim keeps per-task order. A lease covers an attempt; if this process dies, the
lease lapses and the delivery is attempted again (at least once). ``stop()`` stops claiming,
lets attempts in flight finish within the delivery timeout, and frees the leases of any that
did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import defaultdict
from collections.abc import Sequence

import structlog

from service import metrics
from service.delivery import Attempt, Deliverer
from service.errors import StorageUnavailable
from service.relay import Relay
from service.retention import Retention, prune_forever
from service.retry import next_delay
from service.store.base import AttemptRecord, Claim, Store
from service.targets import TargetPolicy

log = structlog.get_logger("service.worker")

#: The error an attempt is recorded with when the store refused its first record.
_UNRECORDABLE = "the store refused this attempt's record (see the relay's log)"

#: How often an idle worker looks for due retries when nothing wakes it.
IDLE_POLL_SECONDS = 0.1


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
    ) -> None:
        self.store = store
        self.deliverer = deliverer
        self.retry_delays = tuple(retry_delays)
        self.concurrency = concurrency
        self.per_subscriber = per_subscriber
        self.claim_batch = claim_batch
        # Claimed deliveries may wait for their subscriber's slot before their attempt starts.
        self.lease_seconds = 3 * deliverer.timeout + 10
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._per_subscriber: dict[str, int] = defaultdict(int)
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
                claimed = await self._claim()
                if claimed and claimed == self.claim_batch:
                    await asyncio.sleep(0)  # more may be due right away; let attempts start
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_POLL_SECONDS):
                        await self._wakeup.wait()
                self._wakeup.clear()
        finally:
            self.running = False

    def limit(self, active: int) -> int:
        """How many deliveries one subscriber may have leased while ``active`` subscribers
        have some: ``per_subscriber``, or its fair share of the slots when there are several
        (one share kept free for a subscriber whose work comes next)."""
        if active > 1:
            return min(self.per_subscriber, max(1, self.concurrency // (active + 1)))
        return self.per_subscriber

    async def _claim(self) -> int:
        free = self.concurrency - len(self._tasks)
        if free <= 0:
            return 0
        limit = self.limit(len(self._per_subscriber))
        saturated = frozenset(sub for sub, count in self._per_subscriber.items() if count >= limit)
        now = time.time()
        if self._found_nothing is not None:
            # Every attempt that ends wakes the worker, but while the same subscribers are
            # saturated a claim leaving them out finds what the last one found: nothing, after
            # walking past all their pending deliveries (5 ms with 20,000 pending). New
            # deliveries (``wake``), a subscriber leaving the saturated set, or the next poll
            # make it worth asking again.
            left_out, at = self._found_nothing
            if saturated >= left_out and now - at < IDLE_POLL_SECONDS:
                return 0
            self._found_nothing = None
        try:
            claims = await self.store.claim_due(
                now, min(free, self.claim_batch), self.lease_seconds, saturated
            )
        except StorageUnavailable as exc:
            log.warning("claim_failed", error=exc.message)
            await asyncio.sleep(1)
            return 0
        self.last_claim_at = now
        if not claims and saturated:
            self._found_nothing = (saturated, now)
        surplus: list[str] = []
        for claim in claims:
            sub = claim.subscriber_id
            active = len(self._per_subscriber) + (sub not in self._per_subscriber)
            # One subscriber alone may queue a whole batch behind its slots; among several,
            # what is over a subscriber's share goes back at once for the next claim.
            if active > 1 and self._per_subscriber.get(sub, 0) >= self.limit(active):
                surplus.append(claim.delivery_id)
                continue
            self._per_subscriber[sub] += 1
            self._tasks[claim.delivery_id] = asyncio.create_task(self._deliver(claim))
        if surplus:
            with contextlib.suppress(StorageUnavailable):  # else their leases lapse
                await self.store.release_leases(surplus)
        # Started, not fetched: a batch given back entirely must not make run() claim again
        # at once (the subscribers it was for are saturated until an attempt ends).
        return len(claims) - len(surplus)

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
            self._per_subscriber[claim.subscriber_id] -= 1
            if not self._per_subscriber[claim.subscriber_id]:
                del self._per_subscriber[claim.subscriber_id]
                self._slots.pop(claim.subscriber_id, None)
            self._wakeup.set()

    def decide(self, claim: Claim, attempt: Attempt) -> AttemptRecord:
        """What an attempt's result means for its delivery (pure)."""
        done_at = attempt.started_at + attempt.latency_ms / 1000
        disable = None
        if attempt.ok:
            outcome, next_at = "succeeded", None
        elif attempt.status_code == 410:
            outcome, next_at = "failed", None
            disable = "the subscriber answered 410 Gone"
        else:
            delay = next_delay(self.retry_delays, claim.cycle_attempts + 1)
            outcome, next_at = ("failed", None) if delay is None else ("pending", done_at + delay)
        return AttemptRecord(
            delivery_id=claim.delivery_id,
            attempted_at=attempt.started_at,
            trigger=claim.trigger,
            latency_ms=attempt.latency_ms,
            status_code=attempt.status_code,
            error=attempt.error,
            response_excerpt=attempt.response_excerpt,
            outcome=outcome,  # type: ignore[arg-type]
            next_attempt_at=next_at,
            disable_subscriber=disable,
        )

    async def _record(self, claim: Claim, attempt: Attempt) -> None:
        record = self.decide(claim, attempt)
        metrics.count_attempt(record.outcome, attempt.latency_ms)
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
        self.deliverer = Deliverer(TargetPolicy.from_settings(settings), settings.delivery_timeout)
        self.worker = DeliveryWorker(
            relay.store,
            self.deliverer,
            settings.retry_delays,
            concurrency=settings.delivery_concurrency,
        )
        from service.watch_worker import WatchWorker

        self.watches = WatchWorker(relay)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.relay.store.exclusive:
            # One process owns this store: leases left by a crash can be freed at once.
            await self.relay.store.release_leases(None)
        self.relay.on_deliveries = self.worker.wake
        await self.watches.start()
        self._tasks = [
            asyncio.create_task(self.worker.run(), name="delivery-worker"),
            asyncio.create_task(
                prune_forever(
                    self.relay.store,
                    Retention(
                        self.relay.settings.retention_days,
                        self.relay.settings.failed_retention_days,
                    ),
                ),
                name="retention",
            ),
        ]

    async def stop(self) -> None:
        """Stop claiming, let attempts in flight finish, free the rest's leases."""
        await self.watches.stop()  # first: its polls may still emit events to deliver
        delivery, retention = self._tasks
        retention.cancel()
        await self.worker.stop()
        await asyncio.gather(delivery, retention, return_exceptions=True)
        await self.deliverer.aclose()
