"""How the delivery worker shares its slots among subscribers: pure accounting, no I/O.

The worker has ``concurrency`` slots, one per delivery leased and not yet recorded. A subscriber
that hangs until the delivery timeout keeps its slots for that long, so the slots are shared:

* **Contenders.** A subscriber contends while it holds slots, for ``memory`` seconds after its
  last slot was freed, and while a claimed batch holds deliveries for it. ``n`` is how many
  contend. The memory is what keeps stalled subscribers counted when their attempts time out
  together: at that instant none of them holds a slot, and without it the first one in due
  order would look alone and take every slot freed.
* **Reserve.** A claim never lets subscribers that already hold a slot take the last
  ``reserve(n) = max(1, concurrency // (n + 2))`` free slots: about the share the next
  subscriber would have as one of ``n + 1``. A subscriber holding none may take any free slot,
  and its first lease is given before anyone's extra ones.
* **Cap.** Each contender may hold at most ``cap(n) = max(1, (concurrency - reserve(n)) // n)``
  slots, so ``n`` contenders at their caps leave the reserve free. Alone, a subscriber may
  queue about two thirds of the slots behind the ``per_subscriber`` requests it has in flight.
* **Batches.** A claimed batch is decided at once (its subscribers count in ``n`` before any of
  its leases is given), not claim by claim in due order; what a subscriber may not take goes
  back to the store (``Admission.surplus``).

So as long as fewer subscribers contend than there are slots, one whose deliveries come due
while the others hang finds a free slot at once. Slots already held are never taken back:
when contenders arrive the caps shrink, and one holding more than its new cap takes no more
until it is under it.

Time is read through the ``clock`` given (``service.clock``), so unit tests drive the memory
with a fake clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from service.clock import Clock, system_clock
from service.store.base import Claim

#: Seconds a subscriber still contends after its last slot was freed (see the module doc).
CONTENDER_MEMORY_SECONDS = 1.0


@dataclass(frozen=True)
class Admission:
    """What to do with a claimed batch: start ``started``, give ``surplus`` back to the store."""

    started: list[Claim]
    surplus: list[Claim]


@dataclass
class FairShares:
    """The worker's slots: who holds how many, and what a claim may take (see the module doc).

    Args:
        concurrency: slots in all (deliveries leased at once).
        per_subscriber: requests one subscriber may have in flight. A subscriber holding that
            many leases is left out of claims even below its cap: it has a request for every
            one of its connections, and more claims would only add to its queue.
        memory: seconds a subscriber contends after its last slot was freed.
        clock: where the time is read.
    """

    concurrency: int
    per_subscriber: int
    memory: float = CONTENDER_MEMORY_SECONDS
    clock: Clock = system_clock
    #: Slots held, per subscriber holding any.
    held: dict[str, int] = field(default_factory=dict)
    #: When each subscriber holding none freed its last slot (pruned after ``memory``).
    _freed_at: dict[str, float] = field(default_factory=dict)
    _in_use: int = 0

    @property
    def in_use(self) -> int:
        """Slots held in all."""
        return self._in_use

    @property
    def free(self) -> int:
        """Slots nobody holds."""
        return self.concurrency - self.in_use

    def contenders(self, also: Iterable[str] = ()) -> set[str]:
        """The subscribers contending now, with ``also`` (those of a batch at hand)."""
        now = self.clock()
        for subscriber, at in list(self._freed_at.items()):
            if now - at >= self.memory:
                del self._freed_at[subscriber]
        return {*self.held, *self._freed_at, *also}

    def reserve(self, contenders: int) -> int:
        """Free slots kept for a subscriber holding none, while ``contenders`` contend."""
        return max(1, self.concurrency // (contenders + 2))

    def cap(self, contenders: int) -> int:
        """Slots one subscriber may hold while ``contenders`` (at least 1) contend."""
        n = max(1, contenders)
        return max(1, (self.concurrency - self.reserve(n)) // n)

    def saturated(self) -> frozenset[str]:
        """Subscribers a claim should leave out: any delivery of theirs would go back.

        Those at their cap or at ``per_subscriber``; and every subscriber holding a slot when
        only the reserve is free (then a claim is for subscribers holding none).
        """
        if not self.held:
            return frozenset()
        n = len(self.contenders())
        if self.free <= self.reserve(n):
            return frozenset(self.held)
        limit = min(self.cap(n), self.per_subscriber)
        return frozenset(sub for sub, count in self.held.items() if count >= limit)

    def admit(self, claims: Sequence[Claim]) -> Admission:
        """Decide a claimed batch and take the slots of what starts.

        First leases first (in due order), then extra ones in due order while their
        subscriber is under its cap and the reserve stays free. ``started`` keeps the batch's
        due order.
        """
        n = len(self.contenders(claim.subscriber_id for claim in claims))
        cap, reserve = self.cap(n), self.reserve(n)
        chosen: set[int] = set()
        for index, claim in enumerate(claims):  # first leases
            sub = claim.subscriber_id
            if sub not in self.held and self.free > 0:
                self._take(sub)
                chosen.add(index)
        for index, claim in enumerate(claims):  # extra leases
            sub = claim.subscriber_id
            if index in chosen:
                continue
            if self.held.get(sub, 0) < cap and self.free - 1 >= reserve:
                self._take(sub)
                chosen.add(index)
        return Admission(
            started=[claim for index, claim in enumerate(claims) if index in chosen],
            surplus=[claim for index, claim in enumerate(claims) if index not in chosen],
        )

    def release(self, subscriber_id: str) -> None:
        """An attempt of ``subscriber_id`` was recorded (or given up): free its slot."""
        self._in_use -= 1
        left = self.held[subscriber_id] - 1
        if left:
            self.held[subscriber_id] = left
        else:
            del self.held[subscriber_id]
            self._freed_at[subscriber_id] = self.clock()

    def _take(self, subscriber_id: str) -> None:
        self._in_use += 1
        self.held[subscriber_id] = self.held.get(subscriber_id, 0) + 1
        self._freed_at.pop(subscriber_id, None)
