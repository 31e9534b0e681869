"""The relay's retry policy, as data and one pure function.

First attempt at once; after a failure, retries after each delay in turn (default 1 s, 2 s,
4 s: attempts at about 0, 1, 3 and 7 s); after the last failure the delivery is failed and
waits for an operator's replay, which starts a fresh cycle.
"""

from __future__ import annotations

from collections.abc import Sequence


def next_delay(delays: Sequence[float], attempts_in_cycle: int) -> float | None:
    """Seconds until the next attempt after ``attempts_in_cycle`` failed ones; None = give up."""
    if attempts_in_cycle <= 0:
        return 0.0
    if attempts_in_cycle > len(delays):
        return None
    return float(delays[attempts_in_cycle - 1])
