"""The watch worker's slots: how many polls each provider may have in flight.

``concurrency`` polls run at once in all. Shared fairly: a provider may take an equal part of
the slots among the providers with polls in flight (itself included), plus one part kept free
while another provider the relay can poll (``configured``) has none, so that provider's next
due watch finds a slot at once. A provider alone takes every slot. So a provider whose API
hangs until the timeout, or a flood of held callbacks for one provider, holds at most its part,
and never delays another provider's polls.

Pure bookkeeping, no clock and no I/O: the worker takes a slot when it claims a watch and
releases it when the poll ends.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

#: The fewest polls a provider may have in flight when it has to share the slots.
MIN_SHARE = 2


class PollSlots:
    def __init__(self, concurrency: int, configured: frozenset[str]) -> None:
        self.concurrency = concurrency
        #: Providers the relay can poll (an API key): those a part is kept free for.
        self.configured = configured
        #: Polls in flight, by provider.
        self.in_flight: Counter[str] = Counter()

    @property
    def free(self) -> int:
        """Slots no poll holds."""
        return self.concurrency - self.in_flight.total()

    def share(self, provider: str) -> int:
        """How many polls ``provider`` may have in flight now (see the module's docstring)."""
        sharing = {p for p, count in self.in_flight.items() if count} | {provider}
        parts = len(sharing) + (not self.configured <= sharing)
        return min(self.concurrency, max(MIN_SHARE, self.concurrency // parts))

    def claimable(self, providers: Iterable[str]) -> dict[str, int]:
        """How many more polls each of ``providers`` may start now (its share left)."""
        return {p: max(0, self.share(p) - self.in_flight[p]) for p in providers}

    def take(self, provider: str) -> None:
        """A poll of ``provider`` started."""
        self.in_flight[provider] += 1

    def release(self, provider: str) -> None:
        """A poll of ``provider`` ended."""
        self.in_flight[provider] -= 1
