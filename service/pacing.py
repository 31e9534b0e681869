"""Per-subscriber rate limits: when a rate-limited subscriber may be sent its next delivery.

A subscriber with ``max_per_second`` gets its deliveries spread evenly, one every
``1 / max_per_second`` seconds, whatever arrives at once (a batch job's 5,000 results). The
pace is kept by each relay process that delivers: with several worker processes (PostgreSQL
replicas, or ``relay worker`` beside ``relay serve``) a subscriber may see up to that many
times its limit.

Pure accounting, no I/O: the delivery worker asks ``ready`` before starting a paced attempt and
calls ``take`` when it starts one, and leaves a subscriber out of its claims until ``ready_at``
(``service.worker``), so waiting deliveries never hold a slot another subscriber could use.
Time is read through the ``clock`` given, so unit tests drive it with a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.clock import Clock, system_clock

#: A start at most this late (the event loop was busy) is caught up on: the next one is not
#: pushed back by it. Later than that, or after a pause, the pace starts afresh: no burst is
#: ever saved up beyond this many seconds' worth of the rate.
CATCH_UP_SECONDS = 0.1


@dataclass
class Pacer:
    """When each paced subscriber may next be sent a delivery (see the module doc)."""

    clock: Clock = system_clock
    _next: dict[str, float] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Whether any subscriber has been paced lately (``waiting`` may be non-empty)."""
        return bool(self._next)

    def ready_at(self, subscriber_id: str) -> float:
        """When ``subscriber_id``'s next delivery may start (0: at once)."""
        return self._next.get(subscriber_id, 0.0)

    def ready(self, subscriber_id: str) -> bool:
        return self.ready_at(subscriber_id) <= self.clock()

    def take(self, subscriber_id: str, per_second: float) -> None:
        """A delivery to ``subscriber_id`` starts now: the next one waits its turn."""
        now = self.clock()
        due = self._next.get(subscriber_id, now)
        if due < now - CATCH_UP_SECONDS:  # idle (or very late): start the pace afresh
            due = now
        self._next[subscriber_id] = max(due, now - CATCH_UP_SECONDS) + 1.0 / per_second

    def waiting(self) -> frozenset[str]:
        """Subscribers whose next delivery may not start yet (others are forgotten)."""
        now = self.clock()
        for subscriber_id, at in list(self._next.items()):
            if at <= now - CATCH_UP_SECONDS:
                del self._next[subscriber_id]
        return frozenset(sub for sub, at in self._next.items() if at > now)

    def next_turn(self) -> float | None:
        """The earliest time a waiting subscriber's turn comes (None: none is waiting)."""
        now = self.clock()
        return min((at for at in self._next.values() if at > now), default=None)
