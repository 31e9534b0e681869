"""The watch service: the relay asks a provider's status API about a task until the task is done.

Some providers never call back (Reve Art), some call back per account (Rivya), and Evolink gives
up on a callback after about 7 seconds: a relay that only listens misses results. A watch polls
``GET`` the task's status with back-off (2 s, 4 s, 8 s ... at most 60 s, and never sooner than
a ``Retry-After`` asks) until the task is terminal or the watch's deadline passes. Each answer
goes through the provider's normalizer and ``Relay.accept``, like a callback: an unchanged state
is a duplicate, a new one an event for the subscribers.

- With ``poll_after_seconds`` a watch is a safety net for callback providers: its first poll
  waits that long, and does not happen at all if a terminal callback arrived meanwhile.
- At the deadline (24 h by default) a last poll is made; if the task is still not terminal, a
  ``generation.failed`` event with error code ``watch_deadline_exceeded`` ends it.
- A provider that says three times in a row that it has no such task (400/404/410/422) ends the
  watch as ``rejected`` with a ``generation.failed`` event (``task_not_found``); a task id that
  cannot even form a status URL ends it at once (``invalid_task_id``).
- An answer whose status word the relay does not know (normalized as ``running``) sets the
  next poll at the back-off's maximum, not the next step, and flags the watch
  (``unknown_status``: the word) for an operator; a known word clears the flag.
- Any other failure of a poll, foreseen or not (a bug, an answer nobody imagined), is a failed
  poll like a 503: recorded with the back-off, counted (``relay_watch_polls_total``), and the
  deadline still applies. A poll never ends without moving ``next_poll_at`` forward, so one
  watch can never make the worker spin.

A watch created by a held callback (``service.holds``) is polled the same way; what the API
answers is what gets emitted. **A hold never gets an event out by itself**: a watch created
by a held callback emits only what the provider's API answered; ended any other way (deadline,
task unknown, id unusable) it ends *suspect* (``suspect``: the reason, ``suspect_status``: the
status claimed, the held callback kept for the operator), emits nothing, and is counted in
``relay_suspect_callbacks_total{provider,reason}``, as is a callback the API contradicted.
The watch keeps the start of the API's last answer (``last_answer``) beside the callback, and
an operator releases or dismisses it (``service.suspects``).

Registering, cancelling and showing watches (the admin API, ``relay watch``) is
``service.watch_requests``; scheduling the polls is ``service.watch_worker``.

Why one module of about 480 lines: it is one class, ``WatchService``, whose methods are the
outcomes of one poll (an answer, a failure, a provider's 429, the deadline, a rejection, the
judgement of a held callback). Each reads and writes the same watch under the same rule (a
poll always moves ``next_poll_at`` forward), which is easier to check in one place than
across modules passing that state along.
"""

from __future__ import annotations

import orjson
import structlog

from service import metrics
from service.errors import InvalidPayload, StorageUnavailable
from service.events import Normalized, dumps
from service.provider_api import StatusAnswer, StatusClients
from service.providers import get_provider
from service.relay import Relay
from service.store.base import Store
from service.store.watch_model import ANSWER_EXCERPT_BYTES, WATCH_STATES, PollRecord, Watch

log = structlog.get_logger("service.watch_service")

#: Consecutive "no such task" answers after which a watch ends as rejected.
NOT_FOUND_LIMIT = 3


def backoff_delay(backoff: tuple[float, float], step: int) -> float:
    """Seconds before the poll after ``step`` earlier ones: first, doubling, at most the cap."""
    first, cap = backoff
    return float(min(cap, first * 2 ** min(step, 40)))


def answer_excerpt(answer: StatusAnswer | None) -> str | None:
    """The start of a status answer's body as text (what the watch keeps); None if empty."""
    if answer is None or not answer.body:
        return None
    return answer.body[:ANSWER_EXCERPT_BYTES].decode("utf-8", "replace")


class WatchService:
    """Carries out one poll of a watch (``WatchWorker`` schedules them)."""

    def __init__(self, relay: Relay, clients: StatusClients | None = None) -> None:
        self.relay = relay
        self.clients = clients or StatusClients(relay.settings)

    @property
    def store(self) -> Store:
        return self.relay.store

    async def aclose(self) -> None:
        await self.clients.aclose()

    # -- polling ---------------------------------------------------------------------------------

    async def poll(self, watch: Watch) -> PollRecord:
        """Ask the provider once, emit what changed, record the outcome; returns the record.

        Raises:
            StorageUnavailable: the store could not record it (the lease then lapses and the
                watch is polled again). Any other exception is recorded as a failed poll.
        """
        try:
            return await self._poll(watch)
        except StorageUnavailable:
            raise
        except Exception as exc:
            return await self._poll_failed(watch, exc)

    async def _poll_failed(self, watch: Watch, exc: Exception) -> PollRecord:
        """An unexpected failure: a failed poll with the back-off, as a 503 would be."""
        log.exception("watch_poll_error", **watch.log_fields())
        metrics.count_poll(watch.provider, "error")
        error = f"the poll failed ({type(exc).__name__}); see the relay's log"
        now = self.relay.clock()
        if now >= watch.deadline_at:
            return await self._expire(watch, now, None, error)
        delay = backoff_delay(self.relay.settings.watch_backoff, watch.backoff_step)
        return await self._record(
            watch,
            now,
            "active",
            error=error,
            next_poll_at=min(now + delay, watch.deadline_at),
            backoff_step=watch.backoff_step + 1,
            not_found=watch.not_found,
        )

    async def _poll(self, watch: Watch) -> PollRecord:
        answer = await self.clients.fetch(watch.provider, watch.task_id)
        now = self.relay.clock()
        fields = watch.log_fields()
        status: str | None = None
        suspect: str | None = None
        #: A status word the relay does not know: the watch polls at its slowest, flagged.
        unknown: str | None = None
        judged = forget_url = False
        error = answer.error
        not_found = watch.not_found
        if answer.outcome == "ok":
            normalized, error = self._normalize(watch, answer)
            if normalized is not None:
                not_found = 0
                status = normalized.status
                if normalized.unknown_status:
                    unknown = normalized.raw_status or "(not a string)"
                # A callback the API contradicts names nobody: its URL's metadata is not
                # attached (a forger's URL must not win the task's result).
                agrees = self._judge_held(watch, normalized)
                forget_url = not agrees and watch.url_id is not None
                suspect = None if agrees else "contradicted"
                current = await self.store.get_watch(watch.id)
                if current is None or current.state != "active":
                    # Canceled (or deleted) while the request was in flight: nothing is
                    # emitted for a watch its operator stopped.
                    log.info("watch_poll_discarded", state=current and current.state, **fields)
                    return await self._record(watch, now, "active", status=status, answer=answer)
                if normalized.terminal and self._conflicted(watch, current):
                    return await self._record(
                        watch, now, "active", status=status, suspect=suspect, answer=answer
                    )
                result = await self.relay.accept(
                    watch.provider,
                    normalized,
                    raw=answer.payload,
                    raw_body=answer.body,
                    raw_is_body=True,  # strict JSON (StatusClients): spliced verbatim
                    url_id=None if forget_url else watch.url_id,
                    metadata=watch.metadata,
                )
                # One line per answered poll (httpx's own request line is silenced).
                log.info(
                    "watch_polled",
                    generation_status=status,
                    outcome=result.outcome,
                    event_id=result.event_id,
                    status_code=answer.status_code,
                    latency_ms=answer.latency_ms,
                    **fields,
                )
                if normalized.terminal:
                    metrics.count_poll(watch.provider, "ok")
                    return await self._record(
                        watch,
                        now,
                        "completed",
                        status=status,
                        event_id=result.event_id,
                        suspect=suspect,
                        answer=answer,
                    )
                judged = True
        elif answer.outcome == "invalid":
            return await self._reject(
                watch,
                now,
                answer,
                "invalid_task_id",
                f"{answer.error}; the relay stopped watching it.",
            )
        elif answer.outcome == "not_found":
            not_found += 1
            log.warning(
                "watch_task_not_found",
                status_code=answer.status_code,
                count=not_found,
                latency_ms=answer.latency_ms,
                **fields,
            )
            if not_found >= NOT_FOUND_LIMIT:
                return await self._reject(
                    watch,
                    now,
                    answer,
                    "task_not_found",
                    f"{watch.provider} answered {answer.error or 'not found'}"
                    f" {NOT_FOUND_LIMIT} times: it does not know this task; the relay stopped"
                    " watching it.",
                )
        if answer.outcome == "not_found":
            metrics.count_poll(watch.provider, "not_found")
        elif answer.status_code == 429:
            await self._pause_provider(watch, now, answer.retry_after)
            metrics.count_poll(watch.provider, "rate_limited")
        else:
            metrics.count_poll(watch.provider, "ok" if error is None else "retry")
        if error is not None and answer.outcome != "not_found":
            log.warning(
                "watch_poll_failed",
                status_code=answer.status_code,
                error=error,
                retry_after=answer.retry_after,
                latency_ms=answer.latency_ms,
                **fields,
            )
        if now >= watch.deadline_at:
            return await self._expire(watch, now, status, error, answer)
        backoff = self.relay.settings.watch_backoff
        # A word the relay does not know may never end: poll it at the slowest interval and
        # let an operator decide (the watch is flagged), rather than every few seconds.
        slowest = unknown is not None
        step = backoff[1] if slowest else backoff_delay(backoff, watch.backoff_step)
        delay = max(step, answer.retry_after or 0.0)
        return await self._record(
            watch,
            now,
            "active",
            status=status,
            error=error,
            next_poll_at=min(now + delay, watch.deadline_at),
            backoff_step=watch.backoff_step + 1,
            not_found=not_found,
            judged=judged,
            forget_url=forget_url,
            suspect=suspect if judged else None,
            answer=answer,
            unknown=unknown,
        )

    async def _pause_provider(self, watch: Watch, now: float, retry_after: float | None) -> None:
        """A 429: the provider's limit is spent (by the user's own calls, say). No replica
        polls it before its ``Retry-After``, or without one before the spacing its budget
        allows between two requests (window / rate: 15 s for Reve Art's default)."""
        settings = self.relay.settings
        rate = settings.api_rates.get(watch.provider, 60)
        pause = retry_after if retry_after is not None else settings.api_rate_window / rate
        await self.store.block_provider(watch.provider, now + pause)
        log.warning(
            "provider_rate_limited",
            provider=watch.provider,
            watch_id=watch.id,
            retry_after=retry_after,
            paused_seconds=round(pause, 3),
        )

    def _conflicted(self, watch: Watch, current: Watch) -> bool:
        """Whether a callback through another URL was held for the task since this poll's
        claim (``current``: the watch as it is now): the result then waits for an operator
        instead of being attributed."""
        if watch.url_id is None or not current.conflict_url_ids:
            return False
        log.warning(
            "attribution_conflict",
            **watch.log_fields(),
            reason="callbacks came through several callback URLs; an operator resolves it",
        )
        return True

    def _normalize(
        self, watch: Watch, answer: StatusAnswer
    ) -> tuple[Normalized | None, str | None]:
        try:
            normalized = get_provider(watch.provider).normalize(answer.payload)
        except InvalidPayload as exc:
            return None, f"unusable answer: {exc.message}"
        if normalized.task_id != watch.task_id:
            return None, f"the provider answered about another task ({normalized.task_id})"
        if normalized.unknown_status:
            log.warning(
                "unknown_status",
                provider=watch.provider,
                task_id=watch.task_id,
                raw_status=normalized.raw_status,
            )
        return normalized, None

    def _judge_held(self, watch: Watch, confirmed: Normalized) -> bool:
        """Compare a held callback with what the API says; log it as suspect if they differ.

        Returns False for a suspect callback, True when it agrees (or none is held).
        """
        if watch.held_status is None:
            return True
        claimed_urls: set[str] = set()
        try:
            # orjson, as the callback was parsed: depth-bounded, never a RecursionError.
            held = get_provider(watch.provider).normalize(orjson.loads(watch.held_body or b""))
            claimed_urls = {output.url for output in held.outputs}
        except (orjson.JSONDecodeError, InvalidPayload):
            pass
        confirmed_urls = {output.url for output in confirmed.outputs}
        fields = {
            **watch.log_fields(),
            "callback_status": watch.held_status,
            "api_status": confirmed.status,
        }
        if watch.held_status != confirmed.status or claimed_urls != confirmed_urls:
            metrics.count_suspect(watch.provider, "contradicted")
            log.warning(
                "suspect_callback",
                reason="the provider's API contradicts the callback; the API's state is emitted",
                outputs_match=claimed_urls == confirmed_urls,
                **fields,
            )
            return False
        log.info("callback_confirmed", **fields)
        return True

    async def _reject(
        self, watch: Watch, now: float, answer: StatusAnswer, code: str, message: str
    ) -> PollRecord:
        """End the watch as rejected: the provider cannot tell anything about this task.

        A watch created by a held callback emits nothing (the API confirmed nothing): it ends
        suspect. A client's watch emits ``generation.failed`` (``code``), without the metadata
        of a callback URL whose held callback was not confirmed. The poll is counted under
        the ``answer``'s outcome (``invalid`` or ``not_found``)."""
        metrics.count_poll(watch.provider, answer.outcome)
        fields = watch.log_fields()
        suspect = self._unconfirmed(watch, code)
        if watch.held_status is not None:
            log.warning(
                "suspect_callback",
                reason=(
                    "the provider's API does not know this task; the callback is dropped"
                    if code == "task_not_found"
                    else f"{answer.error}; the callback is dropped"
                ),
                callback_status=watch.held_status,
                status_code=answer.status_code,
                **fields,
            )
        event_id = None
        if watch.origin == "api" and await self._still_active(watch):
            event_id = await self._emit_failure(watch, code, message)
        log.warning("watch_rejected", event_id=event_id, suspect=suspect, **fields)
        return await self._record(
            watch,
            now,
            "rejected",
            error=answer.error,
            not_found=watch.not_found + (answer.outcome == "not_found"),
            event_id=event_id,
            suspect=suspect,
            answer=answer,
        )

    def _unconfirmed(self, watch: Watch, reason: str) -> str | None:
        """The suspect reason a watch ends with when it ends unconfirmed (``reason``), counted;
        None when it held nothing unconfirmed."""
        if watch.held_status is None and not (watch.origin == "callback" and not watch.suspect):
            return None
        if watch.held_status is not None:
            metrics.count_suspect(watch.provider, reason)
        return reason

    async def _still_active(self, watch: Watch) -> bool:
        """Whether the watch is still active in the store (not canceled while polled)."""
        current = await self.store.get_watch(watch.id)
        return current is not None and current.state == "active"

    async def _expire(
        self,
        watch: Watch,
        now: float,
        status: str | None,
        error: str | None,
        answer: StatusAnswer | None = None,
    ) -> PollRecord:
        """The deadline passed. A client's watch emits ``generation.failed``
        (``watch_deadline_exceeded``); one created by a held callback ends suspect, silently."""
        hours = (watch.deadline_at - watch.created_at) / 3600
        last = status or watch.last_status
        suspect = self._unconfirmed(watch, "deadline_unconfirmed")
        event_id = None
        if watch.origin == "api" and await self._still_active(watch):
            event_id = await self._emit_failure(
                watch,
                "watch_deadline_exceeded",
                f"The task was not finished {hours:g} h after the watch was registered"
                f" (last status: {last or 'unknown'}); the relay stopped watching it.",
            )
        log.warning(
            "watch_expired",
            **watch.log_fields(),
            event_id=event_id,
            suspect=suspect,
        )
        return await self._record(
            watch,
            now,
            "expired",
            status=status,
            error=error,
            event_id=event_id,
            suspect=suspect,
            answer=answer,
        )

    async def _emit_failure(self, watch: Watch, code: str, message: str) -> str:
        normalized = Normalized(
            task_id=watch.task_id, status="failed", error={"code": code, "message": message}
        )
        # No provider payload: ``raw`` says what the relay decided, and why.
        raw = {"relay": {"watch_id": watch.id, "reason": code, "last_status": watch.last_status}}
        result = await self.relay.accept(
            watch.provider,
            normalized,
            raw=raw,
            raw_body=dumps(raw).encode(),
            # A held callback nobody confirmed names nobody: its URL's metadata stays out.
            url_id=watch.url_id if watch.held_status is None else None,
            metadata=watch.metadata,
        )
        return result.event_id

    async def _record(
        self,
        watch: Watch,
        now: float,
        state: str,
        *,
        status: str | None = None,
        error: str | None = None,
        next_poll_at: float | None = None,
        backoff_step: int | None = None,
        not_found: int | None = None,
        event_id: str | None = None,
        judged: bool = False,
        forget_url: bool = False,
        suspect: str | None = None,
        answer: StatusAnswer | None = None,
        unknown: str | None = None,
    ) -> PollRecord:
        """Record a poll (``answer``: the provider's, whose start the watch keeps for the
        operator; ``unknown``: its status word the relay does not know)."""
        assert state in WATCH_STATES  # noqa: S101 - callers pass one of the module's own states
        record = PollRecord(
            watch_id=watch.id,
            polled_at=now,
            state=state,
            next_poll_at=next_poll_at,
            backoff_step=watch.backoff_step if backoff_step is None else backoff_step,
            not_found=0 if not_found is None else not_found,
            last_status=status,
            last_error=error,
            holds_seen=watch.holds,
            event_id=event_id,
            judged=judged,
            forget_url=forget_url,
            suspect=suspect,
            suspect_status=None if suspect is None else watch.held_status or watch.suspect_status,
            answer=answer_excerpt(answer),
            unknown_status=unknown,
        )
        await self.store.record_poll(record)
        return record
