"""Each provider's request budget: at most ``rate`` requests to its API in any ``window`` seconds.

Reve Art allows 10 requests a minute per account, shared with the user's own generate calls;
every watch poll (an Evolink confirmation is one too) spends from the same account. The budget
holds across every replica sharing the store, so it lives in the store:

- ``provider_requests`` is a sliding log: one row per request, ``at`` the time the request
  ended. A claim takes a row per watch it leases, with ``at`` = the end of its lease (the
  request ends before it); the poll's record then sets ``at`` to when the answer came. The
  provider saw the request between the claim and ``at``, so counting rows with
  ``at > now - window`` before a claim keeps every provider-side window of ``window`` seconds
  at ``rate`` requests or fewer, whatever the replicas, their clocks' order or the latency.
- ``provider_budget.blocked_until``: a 429 stops every replica's requests to that provider
  until its ``Retry-After`` (or a whole window when it gives none).

Claims take their tokens in the same transaction as the leases (SQLite: its one writer;
PostgreSQL: ``FOR UPDATE`` on the provider's ``provider_budget`` row), so two replicas never
spend the same token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ApiBudget:
    """Requests allowed per ``window`` seconds, by provider (a provider not named: no limit)."""

    rates: Mapping[str, int]
    window: float = 60.0


@dataclass(frozen=True)
class BudgetState:
    """A provider's budget as it stands: requests within the window, blocked until when."""

    used: int
    blocked_until: float

    def exhausted(self, rate: int, now: float) -> bool:
        """Whether a poll due now waits for the budget."""
        return self.used >= rate or self.blocked_until > now
