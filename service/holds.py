"""Holding unsigned callbacks until the provider's API confirms them.

Evolink signs nothing. When the relay has an Evolink API key (and ``RELAY_EVOLINK_CONFIRM`` is
not false), a terminal Evolink callback is not emitted as received: ``Relay.receive`` holds it,
durably, as a watch due at once (``hold_callback``), and what the API answers is what gets
emitted (the watch is polled like any other, ``service.watch_service``). A callback the API
contradicts is logged as ``suspect_callback`` and never forwarded; while the API cannot be
reached the watch retries with its back-off.

**What a forged callback can cost.** A hold is bounded: at most ``RELAY_HOLDS_PER_URL`` active
holds per callback URL (429 beyond) and ``RELAY_HOLDS_MAX`` in all (503), each polling for at
most ``RELAY_HOLD_DEADLINE``. A repost of a held task joins its hold without restarting its
back-off or its not-found count. A hold never gets an event out by itself.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from service import ids, metrics
from service.errors import RelayError
from service.events import Normalized
from service.settings import Settings
from service.store.base import Store
from service.store.watch_model import HoldLimits, HoldRefused, Watch

log = structlog.get_logger("service.holds")

#: Providers whose terminal callbacks are confirmed with their API before being emitted.
CONFIRMED_PROVIDERS: dict[str, Callable[[Settings], bool]] = {
    "evolink": lambda settings: settings.evolink_confirmation,
}


#: Seconds a sender refused for too many holds is told to wait (a hold lasts seconds when the
#: API answers, at most RELAY_HOLD_DEADLINE when it does not).
HOLD_RETRY_AFTER = 60


class TooManyHeldForUrl(RelayError):
    """This callback URL already has RELAY_HOLDS_PER_URL callbacks awaiting confirmation; retry
    later."""

    status_code = 429
    code = "too_many_held_callbacks"
    retry_after = HOLD_RETRY_AFTER


class HoldsFull(RelayError):
    """The relay already holds RELAY_HOLDS_MAX callbacks awaiting confirmation; retry later."""

    status_code = 503
    code = "held_callbacks_full"
    retry_after = HOLD_RETRY_AFTER


def confirms(settings: Settings, provider: str) -> bool:
    """Whether this provider's callbacks are confirmed with its API (terminal ones held)."""
    check = CONFIRMED_PROVIDERS.get(provider)
    return check is not None and check(settings)


async def hold_callback(
    store: Store,
    settings: Settings,
    provider: str,
    normalized: Normalized,
    body: bytes,
    url_id: str | None,
    now: float,
) -> Watch | None:
    """Hold a terminal callback for confirmation: durably, as a watch due ``now``.

    Returns the watch holding it, or None when the task already has a terminal event (the
    callback is then ingested as usual: a duplicate or superseded, never emitted again).
    Raises ``TooManyHeldForUrl`` (429) or ``HoldsFull`` (503) when a new hold would exceed
    RELAY_HOLDS_PER_URL or RELAY_HOLDS_MAX (a callback joining its task's hold never does).
    A watch returned with ``conflict_url_ids`` waits for an operator, not for a poll.
    """
    watch = Watch(
        id=ids.new_id("wch"),
        provider=provider,
        task_id=normalized.task_id,
        origin="callback",
        state="active",
        metadata={},
        created_at=now,
        updated_at=now,
        deadline_at=now + settings.hold_deadline,
        next_poll_at=now,
        url_id=url_id,
        held_status=normalized.status,
        held_body=body,
        holds=1,
    )
    limits = HoldLimits(per_url=settings.holds_per_url, total=settings.holds_max)
    held = await store.hold_for_confirmation(watch, limits)
    if isinstance(held, HoldRefused):
        metrics.count_hold_refused(provider, held.scope)
        log.warning(
            "hold_refused",
            provider=provider,
            task_id=normalized.task_id,
            scope=held.scope,
            limit=settings.holds_per_url if held.scope == "url" else settings.holds_max,
        )
        raise TooManyHeldForUrl() if held.scope == "url" else HoldsFull()
    if held is not None:
        metrics.count_held(provider)
        log.info(
            "callback_held",
            provider=provider,
            task_id=normalized.task_id,
            watch_id=held.id,
            callback_status=normalized.status,
        )
        if held.conflict_url_ids:
            log.warning(
                "attribution_conflict",
                provider=provider,
                task_id=normalized.task_id,
                watch_id=held.id,
                reason="callbacks came through several callback URLs; an operator resolves it",
            )
    return held
