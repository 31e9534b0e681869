"""How many bytes of request bodies the relay holds at once, across all requests.

A client that sends a large body and stops one byte short holds that memory for as long as it
is allowed to take (``RELAY_BODY_TIMEOUT``); many such clients would hold as much memory as
they like. Every body being received reserves its size here first: the declared
``Content-Length`` at once (so a refusal comes before anything is read), a chunked body as
it grows. A reservation that does not fit is refused (``503 server_busy``, the client retries)
and the connection closed.

Large bodies (over ``SMALL_BODY``) may use only half of the budget, so that the usual small
callbacks always find room beside them. Once received, large callbacks are processed (their
signature checked, parsed, committed) one at a time (``large_turn``), their bodies still held
while they wait: a 1 MiB callback becomes several MiB of parsed objects and event, and its commit
makes the store's queue wait, so a small callback waits behind at most one of them, and memory
does not grow with how many arrive at once.
"""

from __future__ import annotations

import asyncio

#: A body up to this size may use the whole budget; a larger one only its first half.
SMALL_BODY = 64 * 1024


class BodyBudget:
    """A byte budget for request bodies in flight; one per process (``Relay.body_budget``).

    Not thread-safe: used from the event loop only.
    """

    __slots__ = ("large", "large_seen", "large_turn", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        #: The part of ``used`` held by bodies over ``SMALL_BODY``.
        self.large = 0
        #: A large body was held since ``service.memory`` last gave memory back.
        self.large_seen = False
        #: Held while a large body is processed after it was received (see the module).
        self.large_turn = asyncio.Semaphore(1)

    def grow(self, held: int, to: int) -> bool:
        """Let a body that holds ``held`` bytes of the budget hold ``to``; False (and nothing
        changed) when that does not fit."""
        used = self.used + to - held
        large = self.large + _large(to) - _large(held)
        if used > self.limit or large > self.limit // 2:
            return False
        self.used, self.large = used, large
        if large:
            self.large_seen = True
        return True

    def release(self, held: int) -> None:
        """Give back what a body held."""
        self.used -= held
        self.large -= _large(held)


def _large(size: int) -> int:
    return size if size > SMALL_BODY else 0
