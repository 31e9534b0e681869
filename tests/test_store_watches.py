"""The watch methods of the store contract, on SQLite and PostgreSQL alike.

The fixtures (a fresh store of each kind per test, PostgreSQL schemas) are those of
``tests/test_store_contract.py``; this module adds the docstrings of ``Store``'s watch methods
as tests, and what only replicas sharing PostgreSQL must survive: concurrent claims.
"""

# ruff: noqa: F811 (pytest fixtures imported from test_store_contract, used as parameters)
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import pytest

from service import ids
from service.store.base import Store
from service.store.postgres import PostgresStore
from service.store.watch_model import (
    Decision,
    HoldLimits,
    HoldRefused,
    PollRecord,
    Watch,
    WatchFilter,
)
from tests.test_store_contract import (  # noqa: F401 (fixtures)
    anyio_backend,
    incoming,
    make_store,
    opened,
    pg_url,
    postgres_store,
    store,
    store_kind,
)

pytestmark = pytest.mark.anyio
LEASE = 30.0


def watch(
    task: str = "task-1",
    *,
    provider: str = "evolink",
    at: float | None = None,
    due: float | None = None,
    deadline: float = 86_400,
    origin: str = "api",
    metadata: dict[str, Any] | None = None,
    held_status: str | None = None,
    url_id: str | None = None,
) -> Watch:
    now = time.time() if at is None else at
    return Watch(
        id=ids.new_id("wch"),
        provider=provider,
        task_id=task,
        origin=origin,
        state="active",
        metadata=metadata if metadata is not None else {"order": task},
        created_at=now,
        updated_at=now,
        deadline_at=now + deadline,
        next_poll_at=now if due is None else due,
        url_id=url_id,
        held_status=held_status,
        held_body=b'{"id": "%s", "status": "completed"}' % task.encode() if held_status else None,
        holds=1 if held_status else 0,
    )


def poll(
    w: Watch,
    state: str = "active",
    *,
    at: float | None = None,
    next_at: float | None = None,
    step: int = 1,
    status: str | None = "running",
    error: str | None = None,
    event_id: str | None = None,
    holds_seen: int | None = None,
    not_found: int = 0,
    judged: bool = True,
) -> PollRecord:
    return PollRecord(
        watch_id=w.id,
        polled_at=time.time() if at is None else at,
        state=state,
        next_poll_at=next_at,
        backoff_step=step,
        not_found=not_found,
        last_status=status,
        last_error=error,
        holds_seen=w.holds if holds_seen is None else holds_seen,
        event_id=event_id,
        judged=judged,
    )


async def all_watches(store: Store, **filters: Any) -> list[Watch]:
    items: list[Watch] = []
    cursor = None
    while True:
        page = await store.list_watches(WatchFilter(**filters), cursor, 2)
        items += page.items
        cursor = page.next_cursor
        if cursor is None:
            return items


# -- create, get, list, cancel ------------------------------------------------------------------


async def test_create_get_and_one_active_watch_per_task(store: Store) -> None:
    first = watch("t1", metadata={"user": "u-1", "nested": {"a": [1, 2]}})
    stored, created = await store.create_watch(first)
    assert created and stored == first
    assert await store.get_watch(first.id) == first
    assert await store.get_watch("wch_unknown") is None
    again, created = await store.create_watch(watch("t1"))
    assert not created and again == first  # the existing one, nothing stored
    other, created = await store.create_watch(watch("t1", provider="rivya"))
    assert created and other.provider == "rivya"
    assert len(await all_watches(store)) == 2


async def test_cancel_then_a_new_watch_may_be_registered(store: Store) -> None:
    first = watch("t1")
    await store.create_watch(first)
    canceled = await store.cancel_watch(first.id, time.time())
    assert canceled is not None and canceled.state == "canceled"
    assert (await store.cancel_watch(first.id, time.time())).state == "canceled"  # type: ignore[union-attr]
    assert await store.cancel_watch("wch_unknown", time.time()) is None
    second, created = await store.create_watch(watch("t1"))
    assert created and second.id != first.id
    assert await claim(store) == [second.id]  # a canceled watch is never claimed


async def test_cancel_leaves_a_finished_watch_as_it_is(store: Store) -> None:
    first = watch("t1")
    await store.create_watch(first)
    (claimed,) = await store.claim_due_watches(time.time(), 10, LEASE)
    await store.record_poll(poll(claimed, "completed", status="succeeded", event_id="evt_1"))
    after = await store.cancel_watch(first.id, time.time())
    assert after is not None and after.state == "completed" and after.event_id == "evt_1"


async def test_list_filters_and_pages_newest_first(store: Store) -> None:
    created = []
    for n in range(5):
        w = watch(f"t{n}", provider="rivya" if n % 2 else "evolink")
        await store.create_watch(w)
        created.append(w.id)
    await store.cancel_watch(created[0], time.time())
    assert [w.id for w in await all_watches(store)] == created[::-1]
    assert [w.id for w in await all_watches(store, provider="rivya")] == [created[3], created[1]]
    assert [w.id for w in await all_watches(store, state="canceled")] == [created[0]]
    assert [w.id for w in await all_watches(store, task_id="t2")] == [created[2]]
    assert len(await all_watches(store, state="active")) == 4


# -- claims and polls -------------------------------------------------------------------------


async def claim(store: Store, now: float | None = None, limit: int = 100) -> list[str]:
    """The ids ``claim_due_watches`` leases, without shares."""
    return [w.id for w in await store.claim_due_watches(now or time.time(), limit, LEASE)]


async def test_claim_only_due_earliest_first_with_lease(store: Store) -> None:
    now = time.time()
    late = watch("late", due=now + 60)
    second = watch("second", due=now - 5)
    first = watch("first", due=now - 10)
    for w in (late, second, first):
        await store.create_watch(w)
    assert await claim(store, now, limit=1) == [first.id]
    assert await claim(store, now) == [second.id]  # first is leased
    assert await claim(store, now) == []
    assert await claim(store, now + LEASE + 1) == [first.id, second.id]  # leases lapsed
    for w in (first, second):
        await store.record_poll(poll(w, next_at=now + 10**6))
    assert await claim(store, now + 61) == [late.id]


async def test_record_poll_schedules_the_next_and_frees_the_lease(store: Store) -> None:
    now = time.time()
    w = watch("t1", at=now - 1)
    await store.create_watch(w)
    (claimed,) = await store.claim_due_watches(now, 10, LEASE)
    await store.record_poll(
        poll(claimed, at=now, next_at=now + 4, step=2, status="running", error="HTTP 503")
    )
    after = await store.get_watch(w.id)
    assert after is not None
    assert (after.state, after.polls, after.backoff_step) == ("active", 1, 2)
    assert (after.next_poll_at, after.last_polled_at) == (now + 4, now)
    assert (after.last_status, after.last_error) == ("running", "HTTP 503")
    assert await claim(store, now + 3) == []
    assert await claim(store, now + 4) == [w.id]  # no lease left over from the first claim
    # last_status is kept when a poll learned nothing new.
    await store.record_poll(poll(after, at=now + 5, next_at=now + 9, status=None, error="x"))
    assert (await store.get_watch(w.id)).last_status == "running"  # type: ignore[union-attr]


async def test_record_poll_ends_the_watch(store: Store) -> None:
    w = watch("t1")
    await store.create_watch(w)
    (claimed,) = await store.claim_due_watches(time.time(), 10, LEASE)
    await store.record_poll(poll(claimed, "expired", status=None, event_id="evt_deadline"))
    after = await store.get_watch(w.id)
    assert after is not None and (after.state, after.event_id) == ("expired", "evt_deadline")
    assert await claim(store, time.time() + 10**6) == []


async def test_canceled_while_polled_stays_canceled_and_names_what_it_emitted(
    store: Store,
) -> None:
    w = watch("t1")
    await store.create_watch(w)
    (claimed,) = await store.claim_due_watches(time.time(), 10, LEASE)
    await store.cancel_watch(w.id, time.time())
    await store.record_poll(poll(claimed, "active", status="running", next_at=time.time()))
    after = await store.get_watch(w.id)
    assert after is not None and (after.state, after.event_id, after.polls) == ("canceled", None, 0)
    # The poll emitted before it saw the cancel: the canceled watch names that event.
    await store.record_poll(poll(claimed, "completed", status="succeeded", event_id="evt_1"))
    after = await store.get_watch(w.id)
    assert after is not None and (after.state, after.event_id) == ("canceled", "evt_1")
    assert after.last_status is None  # nothing else of the poll is recorded


async def test_due_watch_of_a_finished_task_completes_without_a_claim(store: Store) -> None:
    now = time.time()
    done = watch("done", due=now - 1)
    later = watch("later", due=now + 60)
    running = watch("running", due=now - 1)
    for w in (done, later, running):
        await store.create_watch(w)
    terminal = incoming("done", "succeeded")
    await store.ingest(terminal)
    await store.ingest(incoming("later", "succeeded"))
    await store.ingest(incoming("running", "running", progress=10))
    assert await claim(store, now) == [running.id]
    after = await store.get_watch(done.id)
    assert after is not None and (after.state, after.event_id) == ("completed", terminal.event_id)
    # Not due yet: left alone until then (its safety-net poll is simply not needed).
    assert (await store.get_watch(later.id)).state == "active"  # type: ignore[union-attr]
    assert await claim(store, now + 61) == [running.id]  # its lease lapsed meanwhile
    assert (await store.get_watch(later.id)).state == "completed"  # type: ignore[union-attr]


async def test_release_watch_leases(store: Store) -> None:
    a, b = watch("a"), watch("b")
    for w in (a, b):
        await store.create_watch(w)
    assert len(await claim(store)) == 2
    assert await store.release_watch_leases([a.id]) == 1
    assert await claim(store) == [a.id]
    assert await store.release_watch_leases(None) == 2
    assert sorted(await claim(store)) == sorted([a.id, b.id])


# -- holding callbacks for confirmation -----------------------------------------------------------


async def test_hold_creates_a_watch_due_at_once(store: Store) -> None:
    now = time.time()
    held = await store.hold_for_confirmation(
        watch("t1", origin="callback", metadata={}, held_status="succeeded", url_id="url_1")
    )
    assert held is not None
    assert (held.origin, held.held_status, held.url_id, held.holds) == (
        "callback",
        "succeeded",
        "url_1",
        1,
    )
    assert held.held_body == b'{"id": "t1", "status": "completed"}'
    assert await claim(store, now + 0.001) == [held.id]


async def test_hold_joins_the_tasks_active_watch(store: Store) -> None:
    now = time.time()
    safety_net = watch("t1", due=now + 600, metadata={"user": "u-1"})
    await store.create_watch(safety_net)
    (claimed,) = await store.claim_due_watches(now + 600, 10, LEASE)
    await store.record_poll(poll(claimed, at=now, next_at=now + 60, step=5, not_found=2))
    held = await store.hold_for_confirmation(
        watch("t1", origin="callback", metadata={}, held_status="failed", url_id="url_9", at=now)
    )
    assert isinstance(held, Watch) and held.id == safety_net.id
    assert held.metadata == {"user": "u-1"} and held.origin == "api"
    # Its first hold makes a safety-net watch due at once; the back-off and the not-found
    # count go on.
    assert (held.held_status, held.holds, held.backoff_step, held.not_found) == ("failed", 1, 5, 2)
    assert held.url_id == "url_9" and held.next_poll_at == now
    assert len(await all_watches(store)) == 1
    # A later hold replaces the held callback but keeps the URL the watch already had.
    again = await store.hold_for_confirmation(
        watch("t1", origin="callback", held_status="succeeded", url_id="url_other", at=now)
    )
    assert isinstance(again, Watch) and (again.holds, again.url_id) == (2, "url_9")
    assert again.held_status == "succeeded"


async def test_a_repost_joins_the_hold_without_restarting_it(store: Store) -> None:
    """Reposting a held callback changes nothing of its schedule: not the back-off, not the
    not-found count, not the next poll."""
    now = time.time()
    held = await store.hold_for_confirmation(
        watch("t1", origin="callback", held_status="succeeded", url_id="url_1", at=now)
    )
    assert isinstance(held, Watch)
    (claimed,) = await store.claim_due_watches(now, 10, LEASE)
    await store.record_poll(
        poll(claimed, at=now + 1, next_at=now + 9, step=3, not_found=2, judged=False)
    )
    again = await store.hold_for_confirmation(
        watch("t1", origin="callback", held_status="succeeded", url_id="url_1", at=now + 2)
    )
    assert isinstance(again, Watch) and again.id == held.id and again.holds == 2
    assert (again.next_poll_at, again.backoff_step, again.not_found) == (now + 9, 3, 2)
    assert await claim(store, now + 8) == []


async def test_hold_after_the_task_ended_holds_nothing(store: Store) -> None:
    await store.ingest(incoming("t1", "succeeded"))
    assert await store.hold_for_confirmation(watch("t1", held_status="succeeded")) is None
    assert await all_watches(store) == []


async def test_poll_clears_the_held_callback_it_judged(store: Store) -> None:
    held = await store.hold_for_confirmation(watch("t1", origin="callback", held_status="failed"))
    assert held is not None
    (claimed,) = await store.claim_due_watches(time.time(), 10, LEASE)
    # The provider could not be reached: the callback stays held.
    await store.record_poll(poll(claimed, next_at=time.time(), error="HTTP 503", judged=False))
    kept = await store.get_watch(held.id)
    assert kept is not None and kept.held_status == "failed" and kept.held_body
    (claimed,) = await store.claim_due_watches(time.time(), 10, LEASE)
    await store.record_poll(poll(claimed, next_at=time.time() + 5))
    after = await store.get_watch(held.id)
    assert after is not None and after.held_status is None and after.held_body is None


async def test_a_repost_during_a_poll_keeps_its_claim_for_the_next_poll(store: Store) -> None:
    now = time.time()
    held = await store.hold_for_confirmation(
        watch("t1", origin="callback", held_status="failed", at=now)
    )
    assert held is not None
    (claimed,) = await store.claim_due_watches(now, 10, LEASE)
    # While the poll is in flight, the provider retries its callback (now: succeeded).
    await store.hold_for_confirmation(
        watch("t1", origin="callback", held_status="succeeded", at=now + 1)
    )
    await store.record_poll(poll(claimed, at=now + 2, next_at=now + 30, step=3))
    after = await store.get_watch(held.id)
    assert after is not None
    # The new claim is judged by the next poll, at its time: a repost pulls nothing forward.
    assert (after.held_status, after.next_poll_at, after.backoff_step) == (
        "succeeded",
        now + 30,
        3,
    )
    assert await claim(store, now + 29) == []


async def test_a_first_hold_during_a_poll_keeps_its_immediate_poll(store: Store) -> None:
    now = time.time()
    safety_net = watch("t1", at=now)
    await store.create_watch(safety_net)
    (claimed,) = await store.claim_due_watches(now, 10, LEASE)
    await store.hold_for_confirmation(
        watch("t1", origin="callback", held_status="succeeded", at=now + 1)
    )
    await store.record_poll(poll(claimed, at=now + 2, next_at=now + 30, step=3))
    after = await store.get_watch(safety_net.id)
    assert after is not None and (after.held_status, after.next_poll_at) == ("succeeded", now)
    assert await claim(store, now + 2) == [safety_net.id]


async def test_holds_are_bounded_per_url_and_in_total(store: Store) -> None:
    limits = HoldLimits(per_url=2, total=3)

    async def hold(task: str, url_id: str | None) -> Watch | HoldRefused | None:
        return await store.hold_for_confirmation(
            watch(task, origin="callback", held_status="succeeded", url_id=url_id), limits
        )

    assert isinstance(await hold("t1", "url_a"), Watch)
    assert isinstance(await hold("t2", "url_a"), Watch)
    assert await hold("t3", "url_a") == HoldRefused("url")
    # A repost of a held task joins its hold, over the bound or not.
    assert isinstance(await hold("t2", "url_a"), Watch)
    assert isinstance(await hold("t3", "url_b"), Watch)
    assert await hold("t4", "url_c") == HoldRefused("total")
    assert await hold("t4", None) == HoldRefused("total")
    assert len(await all_watches(store)) == 3
    # A client's watches are not holds; an ended hold no longer counts.
    await store.create_watch(watch("t9"))
    (first,) = [w for w in await all_watches(store) if w.task_id == "t1"]
    await store.record_poll(poll(first, "rejected", at=time.time(), status=None))
    assert isinstance(await hold("t4", "url_a"), Watch)


async def test_a_suspect_ending_keeps_what_was_claimed(store: Store) -> None:
    held = await store.hold_for_confirmation(
        watch("t1", origin="callback", held_status="succeeded", url_id="url_1")
    )
    assert isinstance(held, Watch)
    (claimed,) = await store.claim_due_watches(time.time(), 10, LEASE)
    record = dataclasses.replace(
        poll(claimed, "rejected", status=None, judged=False),
        suspect="task_not_found",
        suspect_status="succeeded",
    )
    await store.record_poll(record)
    after = await store.get_watch(held.id)
    assert after is not None and after.state == "rejected"
    assert (after.suspect, after.suspect_status) == ("task_not_found", "succeeded")
    assert (after.held_status, after.held_body) == ("succeeded", held.held_body)
    assert [w.id for w in await all_watches(store, suspect=True)] == [held.id]
    # A contradicted claim is cleared once judged (the API's answer was emitted); the watch
    # keeps the reason, and a later ending without a suspect keeps it too.
    other = await store.hold_for_confirmation(watch("t2", held_status="succeeded"))
    assert isinstance(other, Watch)
    (claimed,) = await store.claim_due_watches(time.time(), 10, LEASE)
    contradicted = dataclasses.replace(
        poll(claimed, next_at=time.time()), suspect="contradicted", suspect_status="succeeded"
    )
    await store.record_poll(contradicted)
    (claimed,) = await store.claim_due_watches(time.time(), 10, LEASE)
    await store.record_poll(poll(claimed, "completed", status="succeeded", event_id="evt_1"))
    after = await store.get_watch(other.id)
    assert after is not None and (after.state, after.held_status) == ("completed", None)
    assert (after.suspect, after.suspect_status) == ("contradicted", "succeeded")
    assert len(await all_watches(store, suspect=True)) == 2


async def _ended_suspect(store: Store, task: str, url_id: str | None = "url_1") -> Watch:
    held = await store.hold_for_confirmation(
        watch(task, origin="callback", held_status="succeeded", url_id=url_id)
    )
    assert isinstance(held, Watch)
    (claimed,) = [
        w for w in await store.claim_due_watches(time.time(), 10, LEASE) if w.id == held.id
    ]
    await store.record_poll(
        dataclasses.replace(
            poll(claimed, "rejected", status=None, judged=False),
            suspect="task_not_found",
            suspect_status="succeeded",
            answer='{"error": "not found"}',
        )
    )
    return held


async def test_a_suspect_callback_is_decided_once(store: Store) -> None:
    """Only a watch that ended suspect with its callback kept takes a decision, and only the
    first: concurrent decisions record exactly one; an undone decision can be made again."""
    held = await _ended_suspect(store, "t1")
    shown = await store.get_watch(held.id)
    assert shown is not None and shown.last_answer == '{"error": "not found"}'
    assert shown.url_id == "url_1"  # kept: a release forwards with the URL's metadata
    assert [w.id for w in await all_watches(store, undecided=True)] == [held.id]
    now = time.time()
    choices = [
        Decision(held.id, "released" if n % 2 else "dismissed", f"op-{n}", now + n)
        for n in range(8)
    ]
    answers = await asyncio.gather(*(store.decide_suspect(c) for c in choices))
    winners = [c for c, (_, recorded) in zip(choices, answers, strict=True) if recorded]
    assert len(winners) == 1
    after = await store.get_watch(held.id)
    assert after is not None
    assert (after.decision, after.decided_by, after.decided_at) == (
        winners[0].decision,
        winners[0].decided_by,
        winners[0].decided_at,
    )
    assert await all_watches(store, undecided=True) == []
    assert [w.id for w in await all_watches(store, suspect=True)] == [held.id]
    await store.undo_decision(dataclasses.replace(winners[0], decided_at=now - 1))  # not its
    assert (await store.get_watch(held.id)).decision == winners[0].decision  # type: ignore[union-attr]
    await store.undo_decision(winners[0])
    again, recorded = await store.decide_suspect(Decision(held.id, "dismissed", "op", now))
    assert recorded and again is not None and again.decision == "dismissed"


async def test_only_an_ended_suspect_with_its_callback_is_decided(store: Store) -> None:
    """Not an active hold (awaiting confirmation), not a watch that held nothing, not an
    unknown id."""
    active = await store.hold_for_confirmation(
        watch("t1", origin="callback", held_status="succeeded")
    )
    assert isinstance(active, Watch)
    plain, _ = await store.create_watch(watch("t2"))
    now = time.time()
    for target in (active.id, plain.id):
        shown, recorded = await store.decide_suspect(Decision(target, "released", "op", now))
        assert shown is not None and not recorded and shown.decision is None
    assert await store.decide_suspect(Decision("wch_none", "released", "op", now)) == (None, False)
    assert [w.id for w in await all_watches(store, held=True)] == [active.id]


async def test_a_poll_keeps_the_answer_and_the_unknown_word(store: Store) -> None:
    """``last_answer`` is the last answer given (kept when a poll got none); ``unknown_status``
    follows each answered poll and is listed with ``flagged``."""
    created, _ = await store.create_watch(watch("t1"))
    (claimed,) = await store.claim_due_watches(time.time(), 10, LEASE)
    await store.record_poll(
        dataclasses.replace(
            poll(claimed, next_at=time.time()), answer='{"status": "x"}', unknown_status="x"
        )
    )
    assert [w.id for w in await all_watches(store, flagged=True)] == [created.id]
    (claimed,) = await store.claim_due_watches(time.time(), 10, LEASE)
    await store.record_poll(poll(claimed, next_at=time.time(), status=None, error="HTTP 503"))
    shown = await store.get_watch(created.id)
    assert shown is not None and (shown.last_answer, shown.unknown_status) == (
        '{"status": "x"}',
        "x",
    )
    (claimed,) = await store.claim_due_watches(time.time(), 10, LEASE)
    await store.record_poll(dataclasses.replace(poll(claimed), answer='{"status": "running"}'))
    shown = await store.get_watch(created.id)
    assert shown is not None and shown.unknown_status is None
    assert shown.last_answer == '{"status": "running"}'
    assert await all_watches(store, flagged=True) == []


async def test_claim_takes_each_provider_up_to_its_share(store: Store) -> None:
    now = time.time()
    slow = [watch(f"e{n}", provider="evolink", due=now - 10 + n / 100) for n in range(6)]
    genuine = watch("r1", provider="reve-art", due=now - 1)
    for w in (*slow, genuine):
        await store.create_watch(w)
    shares = {"evolink": 2, "reve-art": 2, "apiframe": 2}
    claimed = await store.claim_due_watches(now, 10, LEASE, shares)
    # Earliest due first, each provider up to its share.
    assert [w.id for w in claimed] == [slow[0].id, slow[1].id, genuine.id]
    assert await store.claim_due_watches(now, 10, LEASE, {"evolink": 0, "reve-art": 1}) == []
    again = await store.claim_due_watches(now, 1, LEASE, {"evolink": 3})
    assert [w.id for w in again] == [slow[2].id]


# -- retention and durability -------------------------------------------------------------------


async def test_prune_removes_only_old_finished_watches(store: Store) -> None:
    now = time.time()
    old_done, old_active, new_done = watch("a"), watch("b"), watch("c")
    for w in (old_done, old_active, new_done):
        await store.create_watch(w)
    await store.cancel_watch(old_done.id, now - 100)
    await store.cancel_watch(new_done.id, now)
    assert await store.prune_watches(now - 50, 10) == 1
    assert {w.id for w in await all_watches(store)} == {old_active.id, new_done.id}


async def test_prune_keeps_a_suspect_callback_until_it_is_decided(store: Store) -> None:
    """An undecided suspect callback is the only copy of what was accepted: retention keeps
    it; once released or dismissed it leaves like any finished watch."""
    held = await _ended_suspect(store, "t1")
    later = time.time() + 100
    assert await store.prune_watches(later, 10) == 0
    _, recorded = await store.decide_suspect(Decision(held.id, "dismissed", "op", time.time()))
    assert recorded
    assert await store.prune_watches(later, 10) == 1
    assert await store.get_watch(held.id) is None


async def test_watches_survive_a_reopen(make_store: Callable[[], Store]) -> None:
    first = make_store()
    await first.open()
    w = watch("t1", held_status="succeeded", origin="callback")
    await first.hold_for_confirmation(w)
    await first.close()
    second = make_store()
    await second.open()
    try:
        assert await second.get_watch(w.id) == w
    finally:
        await second.close()


# -- replicas ---------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_concurrent_watch_claims_never_share_a_watch(pg_url: str) -> None:
    """Two replicas, four claimers each: every due watch is claimed exactly once."""
    first, second = postgres_store(pg_url), postgres_store(pg_url)
    async with opened(first, second):
        now = time.time()
        expected = set()
        for n in range(80):
            w = watch(f"t{n}", due=now - 80 + n)
            await first.create_watch(w)
            expected.add(w.id)
        claimed: list[list[str]] = []

        async def claimer(store: PostgresStore) -> None:
            mine: list[str] = []
            while batch := await store.claim_due_watches(now, 7, LEASE):
                mine += [w.id for w in batch]
            claimed.append(mine)

        await asyncio.gather(*(claimer(s) for s in (first, second) for _ in range(4)))
        every = [watch_id for mine in claimed for watch_id in mine]
        assert len(every) == len(set(every)) == 80 and set(every) == expected
        assert sum(1 for mine in claimed if mine) > 1


@pytest.mark.postgres
async def test_concurrent_registrations_keep_one_active_watch(pg_url: str) -> None:
    first, second = postgres_store(pg_url), postgres_store(pg_url)
    async with opened(first, second):
        results = await asyncio.gather(
            *(s.create_watch(watch("t1")) for s in (first, second) for _ in range(5))
        )
        assert sum(created for _, created in results) == 1
        assert len({w.id for w, _ in results}) == 1
