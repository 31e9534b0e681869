"""Replays and redeliveries, and the ordering rule they keep (the admin API, console and CLI).

The rule: an operator's replay never makes a subscriber receive an older status of a task
after a newer one. A failed delivery is not replayed while its subscriber already received a
later event of the same task (or is being sent one); an event is not redelivered to a
subscriber that has any delivery of a later event of its task (a redelivery queues behind
those). The store enforces it inside the replay's transaction (``Store.replay``,
``Store.redeliver``); ``force`` is the operator saying "send it anyway".

A request about one delivery or one subscriber is refused with 409 ``newer_event_delivered``;
a request about many replays the others and reports what it skipped.
"""

from __future__ import annotations

from typing import Any

from service import subscribers
from service.errors import Conflict, NotFound
from service.relay import Relay
from service.store.base import DeliveryFilter, ReplayResult


class NewerEventDelivered(Conflict):
    """A later event of the same task already reached this subscriber."""

    code = "newer_event_delivered"


def replay_refusal(delivery_id: str, newer_id: str) -> str:
    return (
        f"Not replayed: {newer_id}, a delivery of a later event of the same task, already"
        f" reached this subscriber or is on its way, and {delivery_id} would arrive after it"
        " with an older status. Replay with force to send it anyway."
    )


def redelivery_refusal(subscriber_id: str, newer_id: str) -> str:
    return (
        f"Not redelivered to {subscriber_id}: it has {newer_id}, a delivery of a later event"
        " of the same task, and this older event would arrive after it. Redeliver with force"
        " to send it anyway."
    )


def skipped(newer: dict[str, str], key: str = "id") -> list[dict[str, str]]:
    """``newer`` as the API lists it: ``[{key: ..., "newer_delivery_id": ...}]``."""
    return [{key: held, "newer_delivery_id": newer_id} for held, newer_id in newer.items()]


async def replay_one(relay: Relay, delivery_id: str, *, force: bool) -> tuple[dict[str, Any], int]:
    """Replay one delivery: ``(the delivery as it was, 1 or 0)``; 0 when it was not failed.

    Raises:
        NotFound: no such delivery, or its subscriber is gone.
        Conflict: its subscriber is disabled (``subscriber_disabled``).
        NewerEventDelivered: the ordering rule holds it back (and ``force`` is not set).
    """
    delivery = await relay.store.get_delivery(delivery_id)
    if delivery is None:
        raise NotFound("No delivery with this id.")
    await subscribers.require_enabled(relay.store, delivery["subscriber_id"])
    result = await relay.store.replay(DeliveryFilter(), [delivery_id], relay.clock(), force=force)
    if delivery_id in result.newer:
        raise NewerEventDelivered(replay_refusal(delivery_id, result.newer[delivery_id]))
    if result.count:
        relay.on_deliveries()
    return delivery, result.count


async def replay_many(
    relay: Relay, filters: DeliveryFilter, delivery_ids: list[str] | None, *, force: bool
) -> ReplayResult:
    """Replay what the filters or ids select; those the rule holds back are in ``newer``."""
    result = await relay.store.replay(filters, delivery_ids, relay.clock(), force=force)
    if result.count:
        relay.on_deliveries()
    return result
