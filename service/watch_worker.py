"""The watch worker: claims due watches with a lease, polls them, until stopped.

Like the delivery worker: a watch is leased while it is polled, so replicas sharing PostgreSQL
never poll the same task at once, and a watch whose process died is polled again once its lease
lapses. Polls run concurrently (at most ``concurrency``); a failing provider or a store outage
is logged and retried, never fatal; every poll moves the watch's next poll forward (see
``WatchService.poll``), so no watch can make the worker spin. ``stop()`` stops claiming, lets
polls in flight finish within the provider timeout, and frees the leases of any that did not.

Slots are shared between providers (``service.watch_slots``): one provider may have at most
its share of ``concurrency`` polls in flight, and the claim asks only for what each provider
has left. A share is kept free for a provider whose watches come due next, so a provider whose
API hangs until the timeout (or a flood of held callbacks for one provider) never delays
another's polls.

Every provider's API has a request budget (``RELAY_<PROVIDER>_API_RATE`` per
``RELAY_API_RATE_WINDOW`` seconds, ``service.store.budget``) kept in the store, so it holds
across replicas: a claim takes only the watches the budget has tokens for, earliest due first,
so a watch waiting for the budget is polled before any that became due after it (none is
starved). How long watches wait is ``relay_watch_budget_wait_seconds``.

Finished watches are pruned with the rest of the history, past ``RELAY_RETENTION_DAYS``.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from service import metrics
from service.errors import StorageUnavailable
from service.provider_api import StatusClients, polling_configured
from service.providers import PROVIDERS
from service.relay import Relay
from service.store.budget import ApiBudget
from service.store.watch_model import Watch
from service.watch_service import WatchService
from service.watch_slots import PollSlots

log = structlog.get_logger("service.watch_worker")

#: How often an idle worker looks for due watches when nothing wakes it.
IDLE_POLL_SECONDS = 0.25
PRUNE_INTERVAL_SECONDS = 600.0
PRUNE_BATCH = 500


class WatchWorker:
    def __init__(
        self, relay: Relay, clients: StatusClients | None = None, *, concurrency: int = 32
    ) -> None:
        self.relay = relay
        self.service = WatchService(relay, clients)
        # A lease covers the request (at most the provider timeout) and the store writes after.
        self.lease_seconds = 2 * relay.settings.provider_timeout + 30
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Polls in flight, by provider, shared fairly; a share is kept free for the providers
        #: the relay can poll (an API key).
        self.slots = PollSlots(
            concurrency,
            frozenset(name for name in PROVIDERS if polling_configured(relay.settings, name)),
        )
        self._run_task: asyncio.Task[None] | None = None
        self.budget = ApiBudget(relay.settings.api_rates, relay.settings.api_rate_window)
        self._pruned_at = 0.0

    def wake(self) -> None:
        """A watch is due now: claim without waiting for the next look."""
        self._wakeup.set()

    async def start(self) -> None:
        store = self.relay.store
        if store.exclusive:
            # One process owns this store: leases left by a crash can be freed at once.
            await store.release_watch_leases(None)
        self.relay.on_watch_due = self.wake
        self._run_task = asyncio.create_task(self.run(), name="watch-worker")

    async def run(self) -> None:
        """Claim and poll until ``stop()``."""
        while not self._stopping:
            await self._claim()
            await self._prune()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL_SECONDS):
                    await self._wakeup.wait()
            self._wakeup.clear()

    async def _claim(self) -> None:
        free = self.slots.free
        if free <= 0:
            return
        shares = self.slots.claimable(PROVIDERS)
        if not any(shares.values()):
            return
        now = self.relay.clock()
        try:
            claimed = await self.relay.store.claim_due_watches(
                now, free, self.lease_seconds, shares, self.budget
            )
        except StorageUnavailable as exc:
            log.warning("watch_claim_failed", error=exc.message)
            await asyncio.sleep(1)
            return
        except Exception:  # a bug must not stop every watch for good
            log.exception("watch_claim_error")
            await asyncio.sleep(1)
            return
        for watch in claimed:
            metrics.observe_budget_wait(watch.provider, now - watch.next_poll_at)
            self.slots.take(watch.provider)
            self._tasks[watch.id] = asyncio.create_task(self._poll(watch))

    async def _poll(self, watch: Watch) -> None:
        try:
            await self.service.poll(watch)
        except StorageUnavailable as exc:
            # The lease lapses and the watch is polled again: an event already accepted is
            # then a duplicate, so nothing is emitted twice.
            log.warning("watch_poll_unrecorded", watch_id=watch.id, error=exc.message)
        except Exception:
            # ``poll`` records every failure of the poll itself; this is a failure to record
            # one. The lease is kept, not freed: the watch is polled again once it lapses
            # (``lease_seconds``), never at once, so a watch that always fails cannot spin.
            log.exception("watch_poll_error", watch_id=watch.id, provider=watch.provider)
        finally:
            del self._tasks[watch.id]
            self.slots.release(watch.provider)
            self._wakeup.set()

    async def _prune(self) -> None:
        now = self.relay.clock()
        if now - self._pruned_at < PRUNE_INTERVAL_SECONDS:
            return
        self._pruned_at = now
        before = now - self.relay.settings.retention_days * 86_400
        try:
            removed = await self.relay.store.prune_watches(before, PRUNE_BATCH)
        except StorageUnavailable as exc:
            log.warning("watch_prune_failed", error=exc.message)
            return
        if removed:
            log.info("watches_pruned", watches=removed)
            if removed == PRUNE_BATCH:
                self._pruned_at = 0.0  # more to go: next round

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; wait for polls in flight, then free the leases of the rest."""
        self._stopping = True
        self._wakeup.set()
        if self._run_task is not None:
            await self._run_task
        tasks = dict(self._tasks)
        if tasks:
            timeout = grace if grace is not None else self.relay.settings.provider_timeout + 2
            _, pending = await asyncio.wait(tasks.values(), timeout=timeout)
            unfinished = [watch_id for watch_id, task in tasks.items() if task in pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if unfinished:
                with contextlib.suppress(StorageUnavailable):
                    await self.relay.store.release_watch_leases(unfinished)
        self.relay.on_watch_due = lambda: None
        await self.service.aclose()
