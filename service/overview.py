"""The overview an operator looks at first: the last hour, and what waits now.

One builder for the ops console's front page and ``relay status``. Everything durable comes
from the store (``Store.activity``, ``Store.delivery_counts``), so every replica shows the
same. Duplicates and refusals are never stored (a refused callback must cost nothing to
store): those come from the answering process's own tally, when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.clock import Clock
from service.store.base import Store
from service.store.budget import ApiBudget

WINDOW_SECONDS = 3600


@dataclass(frozen=True)
class Overview:
    generated_at: float
    window_seconds: int
    #: Callbacks by outcome: accepted and superseded from the store; the rest (duplicate and
    #: refusal codes) from this process's tally, or absent when there is none (the CLI).
    callbacks: dict[str, int]
    #: True when duplicates and refusals were counted (by the process answering).
    counts_refusals: bool
    #: Events received in the window: ``{type: {"emitted": n, "superseded": n}}``.
    events: dict[str, dict[str, int]]
    #: Deliveries whose status changed in the window, by status.
    deliveries: dict[str, int]
    pending: int
    failed: int
    oldest_pending_seconds: float | None
    oldest_pending: dict[str, Any] | None = None
    providers: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Each budgeted provider's request budget now (``budget_rows``).
    budgets: list[dict[str, Any]] = field(default_factory=list)

    @property
    def refused(self) -> int:
        return sum(n for outcome, n in self.callbacks.items() if outcome not in _NOT_REFUSALS)


_NOT_REFUSALS = frozenset({"accepted", "superseded", "duplicate"})


async def budget_rows(store: Store, budget: ApiBudget, now: float) -> list[dict[str, Any]]:
    """Each provider's request budget as it stands (all replicas): requests in the window, its
    rate, until when a 429 pauses it, and whether its due watches wait for it."""
    rows = []
    for provider, rate in budget.rates.items():
        state = await store.budget_state(provider, now, budget.window)
        rows.append(
            {
                "provider": provider,
                "used": state.used,
                "rate": rate,
                "window": budget.window,
                "paused_until": state.blocked_until if state.blocked_until > now else None,
                "waiting": state.exhausted(rate, now),
            }
        )
    return rows


async def build(
    store: Store,
    clock: Clock,
    recent_callbacks: dict[str, int] | None = None,
    budget: ApiBudget | None = None,
) -> Overview:
    """The overview at ``clock()``: the hour before it, and what waits. ``recent_callbacks``:
    this process's ``provider:outcome`` tally of the last hour
    (``service.metrics.RECENT_CALLBACKS``), if it answers callbacks; ``budget``: the
    providers' request budgets to show (those the relay polls)."""
    now = clock()
    activity = await store.activity(now - WINDOW_SECONDS)
    counts = await store.delivery_counts()
    emitted = sum(states.get("emitted", 0) for states in activity["events"].values())
    superseded = sum(states.get("superseded", 0) for states in activity["events"].values())
    callbacks = {"accepted": emitted, "superseded": superseded}
    providers: dict[str, dict[str, int]] = {}
    if recent_callbacks is not None:
        for key, count in sorted(recent_callbacks.items()):
            provider, _, outcome = key.partition(":")
            providers.setdefault(provider, {})[outcome] = count
            if outcome not in ("accepted", "superseded"):
                callbacks[outcome] = callbacks.get(outcome, 0) + count
    return Overview(
        generated_at=now,
        window_seconds=WINDOW_SECONDS,
        callbacks=callbacks,
        counts_refusals=recent_callbacks is not None,
        events=dict(sorted(activity["events"].items())),
        deliveries=activity["deliveries"],
        pending=counts["pending"],
        failed=counts["failed"],
        oldest_pending_seconds=counts["oldest_pending_seconds"],
        oldest_pending=activity["oldest_pending"],
        providers=providers,
        budgets=[] if budget is None else await budget_rows(store, budget, now),
    )


def human_age(seconds: float | None) -> str:
    """``75`` -> ``1 min 15 s``; None -> ``-``."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def table_rows(overview: Overview) -> list[list[str]]:
    """The overview as ``SECTION, WHAT, COUNT`` rows (``relay status``)."""
    rows = [["SECTION", "WHAT", "COUNT"]]
    for outcome, count in overview.callbacks.items():
        rows.append(["callbacks, last hour", outcome, str(count)])
    if not overview.counts_refusals:
        rows.append(["callbacks, last hour", "duplicate / refused", "n/a (see /ops or /metrics)"])
    if not overview.events:
        rows.append(["events, last hour", "(none)", "0"])
    for event_type, states in overview.events.items():
        rows.append(["events, last hour", f"{event_type} emitted", str(states["emitted"])])
        if states["superseded"]:
            rows.append(
                ["events, last hour", f"{event_type} superseded", str(states["superseded"])]
            )
    for status in ("succeeded", "failed", "pending"):
        rows.append(["deliveries, last hour", status, str(overview.deliveries.get(status, 0))])
    rows.append(["now", "pending deliveries", str(overview.pending)])
    rows.append(["now", "failed deliveries", str(overview.failed)])
    oldest = overview.oldest_pending
    age = human_age(overview.oldest_pending_seconds)
    rows.append(["now", "oldest pending", age if oldest is None else f"{age} ({oldest['id']})"])
    return rows
