"""Watch requests: validating a new watch, registering, cancelling and resolving one, and a
watch as the admin API, the console and the CLI show it (JSON).

The polling itself is ``service.watch_service``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import structlog

from service import ids
from service.clock import rfc3339
from service.errors import Conflict, InvalidInput, NotFound
from service.events import dumps
from service.provider_api import polling_configured
from service.providers import get_provider
from service.providers.base import MAX_TASK_ID_LENGTH, task_id_problem
from service.relay import Relay
from service.settings import Settings
from service.shapes.base import decode
from service.shapes.watches import MAX_DEADLINE_SECONDS, NewWatch
from service.shapes.watches import Watch as WatchShape
from service.store.budget import BudgetState
from service.store.watch_model import Watch

log = structlog.get_logger("service.watch_requests")

__all__ = ["MAX_DEADLINE_SECONDS"]

MAX_METADATA_BYTES = 16_384


class WatchExists(Conflict):
    """The task already has an active watch."""

    code = "watch_exists"


class ProviderNotConfigured(InvalidInput):
    """The relay has no API key for this provider's status API."""

    status_code = 422
    code = "provider_not_configured"


class WatchNotActive(Conflict):
    """The watch has already ended."""

    code = "watch_not_active"


#: How much of a held callback a listing shows (``GET /v1/watches/{id}`` shows it whole): a
#: page of 100 forged callbacks of 1 MiB each would otherwise be a 100 MiB answer.
LISTED_CALLBACK_BYTES = 16_384


def shown(
    watch: Watch,
    url_metadata: dict[str, dict[str, Any]] | None = None,
    waiting_for: str | None = None,
    *,
    whole: bool = True,
) -> WatchShape:
    """A watch as the admin API shows it (``url_metadata``: the metadata of the callback URLs
    of its conflict, by url id; ``waiting_for``: ``budget`` when it is due but its provider's
    request budget is spent or paused by a 429; ``whole``: the held callback whole, else its
    first ``LISTED_CALLBACK_BYTES``)."""
    active = watch.state == "active"
    conflict = None
    if watch.conflict_url_ids:
        known = url_metadata or {}
        conflict = {
            "urls": [
                {"url_id": url_id, "metadata": known.get(url_id, {})}
                for url_id in (watch.url_id, *watch.conflict_url_ids)
                if url_id is not None
            ]
        }
    return msgspec.convert(
        {
            "id": watch.id,
            "provider": watch.provider,
            "task_id": watch.task_id,
            "state": watch.state,
            "origin": watch.origin,
            "metadata": watch.metadata,
            "created_at": rfc3339(watch.created_at),
            "updated_at": rfc3339(watch.updated_at),
            "deadline_at": rfc3339(watch.deadline_at),
            "next_poll_at": rfc3339(watch.next_poll_at) if active else None,
            "waiting_for": waiting_for,
            "polls": watch.polls,
            "last_polled_at": None
            if watch.last_polled_at is None
            else rfc3339(watch.last_polled_at),
            "last_status": watch.last_status,
            "last_error": watch.last_error,
            "held_status": watch.held_status,
            "event_id": watch.event_id,
            "conflict": conflict,
            "suspect": None
            if watch.suspect is None
            else {
                "reason": watch.suspect,
                "callback_status": watch.suspect_status,
                "decision": watch.decision,
                "decided_by": watch.decided_by,
                "decided_at": None if watch.decided_at is None else rfc3339(watch.decided_at),
            },
            # The callback held (awaiting confirmation, or kept because it ended suspect), as
            # received, and the start of the API's last answer: what an operator judges.
            "held_callback": None
            if watch.held_body is None
            else (watch.held_body if whole else watch.held_body[:LISTED_CALLBACK_BYTES]).decode(
                "utf-8", "replace"
            ),
            "held_callback_bytes": None if watch.held_body is None else len(watch.held_body),
            "last_answer": watch.last_answer,
            "flag": "unknown_status" if watch.unknown_status is not None else None,
            "unknown_status": watch.unknown_status,
        },
        WatchShape,
    )


def watch_json(
    watch: Watch,
    url_metadata: dict[str, dict[str, Any]] | None = None,
    waiting_for: str | None = None,
    *,
    whole: bool = True,
) -> dict[str, Any]:
    """``shown`` as plain JSON values (the console's pages, ``relay watch``)."""
    answer: dict[str, Any] = msgspec.to_builtins(
        shown(watch, url_metadata, waiting_for, whole=whole)
    )
    return answer


async def view(
    relay: Relay,
    watch: Watch,
    budgets: dict[str, BudgetState] | None = None,
    *,
    whole: bool = True,
) -> WatchShape:
    """``shown``, with the metadata of its conflict's callback URLs looked up, and whether
    it waits for its provider's budget (``budgets``: states already looked up, by provider)."""
    urls = (watch.url_id, *watch.conflict_url_ids) if watch.conflict_url_ids else ()
    metadata = {url_id: await relay.metadata_for(url_id) for url_id in urls if url_id}
    now = relay.clock()
    rate = relay.settings.api_rates.get(watch.provider)
    waiting_for = None
    if (
        watch.state == "active"
        and watch.next_poll_at <= now
        and not watch.conflict_url_ids
        and rate is not None
    ):
        budgets = {} if budgets is None else budgets
        if watch.provider not in budgets:
            budgets[watch.provider] = await relay.store.budget_state(
                watch.provider, now, relay.settings.api_rate_window
            )
        if budgets[watch.provider].exhausted(rate, now):
            waiting_for = "budget"
    return shown(watch, metadata, waiting_for, whole=whole)


async def watch_view(
    relay: Relay,
    watch: Watch,
    budgets: dict[str, BudgetState] | None = None,
    *,
    whole: bool = True,
) -> dict[str, Any]:
    """``view`` as plain JSON values (``relay watches``)."""
    answer: dict[str, Any] = msgspec.to_builtins(await view(relay, watch, budgets, whole=whole))
    return answer


def new_watch(settings: Settings, new: NewWatch, now: float) -> Watch:
    """A watch from a checked ``POST /v1/watches`` body (or ``relay watch``): what its shape
    cannot check alone (the provider is known and configured, the task id is one, the
    metadata's size, the first poll before the deadline); raises ``InvalidInput``."""
    provider = new.provider
    get_provider(provider)
    if not polling_configured(settings, provider):
        env = provider.upper().replace("-", "_")
        raise ProviderNotConfigured(
            f"The relay has no API key for {provider}'s status API: set RELAY_{env}_API_KEY."
        )
    task_id = str(new.task_id).strip()
    problem = task_id_problem(task_id)
    if problem is not None:
        raise InvalidInput(
            f"task_id must be the provider's task id (1 to {MAX_TASK_ID_LENGTH} characters,"
            f" no control characters, not only dots); it {problem}.",
            code="invalid_task_id",
        )
    metadata = {} if new.metadata is None else new.metadata
    if len(dumps(metadata)) > MAX_METADATA_BYTES:
        raise InvalidInput("metadata must be at most 16 KiB of JSON.", code="invalid_metadata")
    deadline_seconds = (
        settings.watch_deadline if new.deadline_seconds is None else float(new.deadline_seconds)
    )
    poll_after = new.poll_after_seconds
    if poll_after is not None and poll_after > deadline_seconds:
        raise InvalidInput(
            "poll_after_seconds must not be later than the deadline.",
            code="invalid_poll_after",
        )
    first_poll = settings.watch_backoff[0] if poll_after is None else float(poll_after)
    return Watch(
        id=ids.new_id("wch"),
        provider=provider,
        task_id=task_id,
        origin="api",
        state="active",
        metadata=metadata,
        created_at=now,
        updated_at=now,
        deadline_at=now + deadline_seconds,
        next_poll_at=now + first_poll,
        # Without poll_after the first poll took the first delay: the next one waits the second.
        backoff_step=1 if poll_after is None else 0,
    )


async def create_watch(relay: Relay, body: Mapping[str, Any]) -> Watch:
    """``register_watch`` from a JSON object (``relay watch``)."""
    return await register_watch(relay, decode(NewWatch, body))


async def register_watch(relay: Relay, new: NewWatch) -> Watch:
    """Register a watch (admin API, ``relay watch``); raises ``InvalidInput``, ``WatchExists``."""
    watch = new_watch(relay.settings, new, relay.clock())
    stored, created = await relay.store.create_watch(watch)
    if not created:
        raise WatchExists(
            f"{watch.provider} task {watch.task_id} is already watched by {stored.id};"
            f" cancel it first (DELETE /v1/watches/{stored.id}) to register a new one."
        )
    log.info(
        "watch_created",
        watch_id=stored.id,
        provider=stored.provider,
        task_id=stored.task_id,
        first_poll_in=round(stored.next_poll_at - stored.created_at, 3),
    )
    if stored.next_poll_at <= relay.clock():
        relay.on_watch_due()
    return stored


async def cancel_watch(relay: Relay, watch_id: str) -> Watch:
    """Cancel an active watch; raises ``NotFound``, ``WatchNotActive``."""
    watch = await relay.store.cancel_watch(watch_id, relay.clock())
    if watch is None:
        raise NotFound("No watch with this id.")
    if watch.state != "canceled":
        raise WatchNotActive(f"The watch has already ended ({watch.state}).")
    return watch


class NoConflict(Conflict):
    """The watch is not waiting for an operator to resolve an attribution conflict."""

    code = "no_conflict"


async def resolve_conflict(relay: Relay, watch_id: str, url_id: str | None) -> Watch:
    """An operator names whose callback URL a conflicted task's result is for (``url_id``, or
    None for none); the watch then polls at once. Raises ``NotFound``, ``NoConflict``,
    ``InvalidInput``."""
    watch = await relay.store.get_watch(watch_id)
    if watch is None:
        raise NotFound("No watch with this id.")
    if watch.state != "active" or not watch.conflict_url_ids:
        raise NoConflict()
    candidates = (watch.url_id, *watch.conflict_url_ids)
    if url_id is not None and url_id not in candidates:
        raise InvalidInput(
            'Send {"url_id": ...}: one of the conflict\'s url ids, or null for none.',
            code="invalid_url_id",
        )
    resolved = await relay.store.resolve_conflict(watch.id, url_id, relay.clock())
    if resolved is None or resolved.conflict_url_ids or resolved.state != "active":
        raise NoConflict()
    log.info(
        "attribution_resolved",
        watch_id=watch.id,
        provider=watch.provider,
        task_id=watch.task_id,
        url_id=url_id,
    )
    relay.on_watch_due()
    return resolved
