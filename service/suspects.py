"""An operator's decision about a suspect callback: release it (forward it as received) or
dismiss it (drop it), recorded on its watch.

A held callback the provider's API did not confirm ends *suspect* (``service.watch_service``): its
watch keeps the callback, the API's last answer and the reason, and nothing is emitted. The
relay cannot know more than the API told it, so an operator decides:

- **release**: the callback is forwarded as received, through ``Relay.accept`` with the
  metadata of the callback URL it came through, like any callback (a task that already has a
  terminal event makes it ``superseded``: stored, not emitted again);
- **dismiss**: nothing is emitted.

The decision (``released`` or ``dismissed``), who made it (``admin_api``, ``console``,
``cli``) and when are recorded on the watch by one conditional UPDATE
(``Store.decide_suspect``): of two concurrent decisions exactly one is recorded, the other is
409, so a callback is released at most once. A release whose forwarding fails (the store is
unavailable) forgets its decision again, so the operator can retry.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from service import metrics
from service.callback_json import parse_callback
from service.errors import Conflict, NotFound
from service.providers import get_provider
from service.relay import Relay
from service.store.base import IngestResult
from service.store.watch_model import Decision, Watch

log = structlog.get_logger("service.suspects")


class NotSuspect(Conflict):
    """The watch has no suspect callback to decide about (none, or it awaits confirmation)."""

    code = "not_suspect"


class AlreadyDecided(Conflict):
    """An operator already released or dismissed this suspect callback."""

    code = "already_decided"


@dataclass(frozen=True)
class Decided:
    """A recorded decision: the watch as it is now, and for a release what ``Relay.accept``
    made of the callback."""

    watch: Watch
    result: IngestResult | None = None


async def decide(relay: Relay, watch_id: str, decision: str, decided_by: str) -> Decided:
    """Release (``released``) or dismiss (``dismissed``) a watch's suspect callback.

    Raises ``NotFound``, ``NotSuspect`` or ``AlreadyDecided`` (409), and ``StorageUnavailable``
    (the decision is then not recorded)."""
    assert decision in ("released", "dismissed")  # noqa: S101 - the HTTP and CLI layers validate the decision
    choice = Decision(watch_id, decision, decided_by, relay.clock())
    watch, recorded = await relay.store.decide_suspect(choice)
    if watch is None:
        raise NotFound("No watch with this id.")
    if not recorded:
        if watch.decision is not None:
            raise AlreadyDecided(
                f"This suspect callback was already {watch.decision} ({watch.decided_by})."
            )
        raise NotSuspect(
            "This watch has no suspect callback to decide about: it held none, it is still"
            " awaiting confirmation, or its callback was not kept."
        )
    result = None
    if decision == "released":
        try:
            result = await _forward(relay, watch)
        except BaseException:
            await relay.store.undo_decision(choice)
            raise
    metrics.count_decision(watch.provider, decision)
    log.warning(
        "suspect_callback_decided",
        **watch.log_fields(),
        decision=decision,
        decided_by=decided_by,
        reason=watch.suspect,
        outcome=None if result is None else result.outcome,
        event_id=None if result is None else result.event_id,
    )
    return Decided(watch, result)


async def _forward(relay: Relay, watch: Watch) -> IngestResult:
    """The held callback, read as it was at intake, through ``Relay.accept``."""
    body = watch.held_body or b""
    payload = parse_callback(body)
    normalized = get_provider(watch.provider).normalize(payload)
    return await relay.accept(
        watch.provider,
        normalized,
        raw=payload,
        raw_body=body,
        raw_is_body=True,
        url_id=watch.url_id,
        metadata=watch.metadata,
    )
