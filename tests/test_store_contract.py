"""One contract, every store: the docstrings of ``service.store.base.Store``, as tests.

Each test runs against SQLite (a temporary file) and PostgreSQL (a fresh schema per test on
``RELAY_TEST_POSTGRES_URL``), through the public ``Store`` methods only. The tests at the end
cover what only a store shared by several replicas must survive: concurrent claims, concurrent
ingests of one callback, replicas migrating at once, and the server going away.

Without a reachable PostgreSQL the postgres cases are skipped, or fail when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import ipaddress
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from starlette.datastructures import Secret

from service import ids, served_policy
from service.clock import rfc3339
from service.errors import InvalidInput, StorageUnavailable
from service.events import STATUSES, Normalized
from service.settings import ConfigError, Settings
from service.store import open_store
from service.store.base import (
    ApiKey,
    ArchiveJob,
    ArchiveOutcome,
    AttemptRecord,
    Claim,
    DeliveryFilter,
    EventFilter,
    IncomingEvent,
    Store,
    Subscriber,
)
from service.store.idempotency_model import EarlierRequest, IdempotencyClaim, StoredAnswer
from service.store.postgres import MIGRATIONS as POSTGRES_MIGRATIONS
from service.store.postgres import PostgresStore
from service.store.sqlite import SQLiteStore
from tests.conftest import EVOLINK_COMPLETED, RelayServer, stop_relays_on
from tests.subscriber_server import SubscriberServer

pytestmark = pytest.mark.anyio

POSTGRES_URL = os.environ.get(
    "RELAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
LEASE = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- PostgreSQL availability and per-test schemas -----------------------------------------------

_reachable: dict[str, str | None] = {}


def _where(url: str) -> str:
    params = conninfo_to_dict(url)
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname')}"


def require_postgres() -> None:
    """Skip when PostgreSQL is not reachable; fail instead on CI, where it must be."""
    if POSTGRES_URL not in _reachable:
        try:
            with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _reachable[POSTGRES_URL] = None
        except psycopg.Error as exc:
            _reachable[POSTGRES_URL] = str(exc).strip().splitlines()[0]
    reason = _reachable[POSTGRES_URL]
    if reason is not None:
        message = (
            f"PostgreSQL not reachable at {_where(POSTGRES_URL)} ({reason}); these tests need"
            " it: start it or point RELAY_TEST_POSTGRES_URL at one"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@contextlib.contextmanager
def fresh_schema() -> Iterator[str]:
    """A database URL whose ``search_path`` is a new, empty schema, dropped afterwards.

    The relays of ``relay_factory`` still running on it are stopped before the drop, whatever
    the order of the test's fixtures (``tests.conftest.stop_relays_on``).
    """
    require_postgres()
    schema = f"relay_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    # A URL (not a key=value string) so that open_store and a whole relay accept it too.
    separator = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        stop_relays_on(url)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


def postgres_store(url: str, **options: Any) -> PostgresStore:
    return PostgresStore(url, max_size=4, **options)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def make_store(
    store_kind: str, request: pytest.FixtureRequest, tmp_path: Any
) -> Callable[[], Store]:
    """Builds not-yet-opened stores on this test's database."""
    if store_kind == "sqlite":
        return lambda: SQLiteStore(str(tmp_path / "relay.db"))
    url = request.getfixturevalue("pg_url")
    return lambda: postgres_store(url)


@pytest.fixture
async def store(make_store: Callable[[], Store]) -> AsyncIterator[Store]:
    opened = make_store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


# -- builders -----------------------------------------------------------------------------------


def incoming(
    task: str = "task-1",
    status: str = "succeeded",
    *,
    provider: str = "evolink",
    key: str | None = None,
    at: float | None = None,
    progress: int | None = None,
) -> IncomingEvent:
    """An event as the intake pipeline stores it: ``status`` is one of the relay's own
    (``service.events.STATUSES``), and the type, terminality and dedup key are the ones
    ``Normalized`` gives the pipeline."""
    assert status in STATUSES, f"{status!r} is not a status the relay produces"
    update = Normalized(task_id=task, status=status, progress=progress)
    event_id = ids.new_id("evt")
    received = time.time() if at is None else at
    body = {
        "id": event_id,
        "type": update.event_type,
        "subject": task,
        "data": {"provider": provider},
    }
    return IncomingEvent(
        event_id=event_id,
        provider=provider,
        task_id=task,
        status=status,
        progress=progress,
        event_type=update.event_type,
        terminal=update.terminal,
        dedup_key=key or update.dedup_key(provider),
        received_at=received,
        url_id=None,
        body=json.dumps(body, separators=(",", ":")),
        raw_body=b'{"raw": true}',
    )


def subscriber(
    subscriber_id: str | None = None,
    *,
    providers: tuple[str, ...] | None = None,
    event_types: tuple[str, ...] | None = None,
    enabled: bool = True,
    at: float | None = None,
) -> Subscriber:
    created = time.time() if at is None else at
    return Subscriber(
        id=subscriber_id or ids.new_id("sub"),
        url="https://hooks.example.com/relay",
        description="a test subscriber",
        providers=providers,
        event_types=event_types,
        enabled=enabled,
        created_at=created,
        updated_at=created,
        secrets=(f"whsec_{uuid.uuid4().hex}",),
    )


def attempt(
    claim: Claim | str,
    outcome: str,
    *,
    at: float | None = None,
    status_code: int | None = None,
    error: str | None = None,
    next_attempt_at: float | None = None,
    disable: str | None = None,
) -> AttemptRecord:
    delivery_id = claim if isinstance(claim, str) else claim.delivery_id
    trigger = "scheduled" if isinstance(claim, str) else claim.trigger
    if status_code is None and error is None:
        status_code = 204 if outcome == "succeeded" else 500
    return AttemptRecord(
        delivery_id=delivery_id,
        attempted_at=time.time() if at is None else at,
        trigger=trigger,
        latency_ms=12.5,
        status_code=status_code,
        error=error,
        response_excerpt=None if outcome == "succeeded" else "upstream unavailable",
        outcome=outcome,  # type: ignore[arg-type]
        next_attempt_at=next_attempt_at,
        disable_subscriber=disable,
    )


async def deliveries(store: Store, **filters: Any) -> list[dict[str, Any]]:
    """All deliveries matching ``filters``, newest first (every page)."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await store.list_deliveries(DeliveryFilter(**filters), cursor, 100)
        items += page.items
        cursor = page.next_cursor
        if cursor is None:
            return items


async def claim_all(store: Store, now: float, **options: Any) -> list[Claim]:
    return await store.claim_due(
        now,
        options.get("limit", 100),
        options.get("lease", LEASE),
        frozenset(options.get("exclude", ())),
    )


# -- meta and callback URLs ---------------------------------------------------------------------


async def test_meta_is_created_once(store: Store) -> None:
    assert await store.get_meta("secret_key") is None
    assert await store.get_or_create_meta("secret_key", "first") == "first"
    assert await store.get_or_create_meta("secret_key", "second") == "first"
    assert await store.get_meta("secret_key") == "first"
    await store.ping()


async def test_meta_is_replaced_by_set(store: Store) -> None:
    await store.set_meta("served_policy", "one")
    await store.set_meta("served_policy", "two")
    assert await store.get_meta("served_policy") == "two"


async def test_the_served_policy_round_trips_and_garbage_reads_as_none(store: Store) -> None:
    """What a relay records at start (``service.served_policy``) reads back the same; a value
    the CLI cannot use (hand-edited, another version's) reads as none recorded."""
    assert await served_policy.recorded(store) is None
    settings = Settings(
        public_url="https://relay.example.com",
        allow_private_targets=True,
        target_allowlist=(ipaddress.ip_network("10.0.0.0/8"),),
        secret_keys=(Secret("k1"), Secret("k0")),
        admin_token=Secret("admin"),
    )
    await served_policy.record(store, settings, lambda: 1_700_000_000.0)
    assert await served_policy.recorded(store) == served_policy.ServedPolicy.of(
        settings, 1_700_000_000.0
    )
    for garbage in ("", "[]", "{}", '{"public_url": 1}', "null", "not json"):
        await store.set_meta("served_policy", garbage)
        assert await served_policy.recorded(store) is None, garbage
    fields = dataclasses.asdict(served_policy.ServedPolicy.of(settings, 0.0))
    for wrong in (
        {"target_allowlist": ["x/99"]},
        {"public_url": 1},
        {"signing_key": None},
        {"recorded_at": "x"},
    ):
        await store.set_meta("served_policy", json.dumps(fields | wrong))
        assert await served_policy.recorded(store) is None, wrong


async def test_callback_url_metadata_round_trips(store: Store) -> None:
    now = time.time()
    metadata = {"user_id": "u-42", "nested": {"a": [1, 2]}, "unicode": "é✓"}
    await store.create_callback_url("url_1", "evolink", metadata, now, now + 3600)
    assert await store.get_callback_metadata("url_1") == metadata
    assert await store.get_callback_metadata("url_unknown") is None


# -- ingest -------------------------------------------------------------------------------------


async def test_accepted_event_is_stored_and_fanned_out(store: Store) -> None:
    sub = subscriber()
    await store.create_subscriber(sub)
    event = incoming()
    result = await store.ingest(event)
    assert (result.outcome, result.event_id, result.deliveries) == ("accepted", event.event_id, 1)
    stored = await store.get_event(event.event_id)
    assert stored == {**json.loads(event.body), "relay": {"state": "emitted"}}
    assert await store.get_event("evt_unknown") is None
    (delivery,) = await deliveries(store)
    stamp = rfc3339(event.received_at)
    assert delivery == {
        "id": delivery["id"],
        "event_id": event.event_id,
        "subscriber_id": sub.id,
        "status": "pending",
        "attempt_count": 0,
        "next_attempt_at": stamp,
        "last_error": None,
        "created_at": stamp,
        "updated_at": stamp,
    }
    assert delivery["id"].startswith("dlv_")


async def test_an_operation_failing_alone_leaves_the_others_of_its_batch_committed(
    store: Store,
) -> None:
    """Issued together (one SQLite batch, one transaction), a failing operation raises its own
    error and undoes its own writes; the others commit whole, fan-out included."""
    taken = subscriber()
    await store.create_subscriber(taken)
    first, second = incoming("task-a"), incoming("task-b")
    results = await asyncio.gather(
        store.ingest(first),
        store.create_subscriber(subscriber(taken.id)),  # the id is taken: this one fails
        store.ingest(second),
        return_exceptions=True,
    )
    assert isinstance(results[1], Exception) and not isinstance(results[1], StorageUnavailable)
    for result, event in ((results[0], first), (results[2], second)):
        assert not isinstance(result, BaseException), result
        assert (result.outcome, result.event_id, result.deliveries) == (
            "accepted",
            event.event_id,
            1,
        )
        assert await store.get_event(event.event_id) is not None
    assert sorted(d["event_id"] for d in await deliveries(store)) == sorted(
        [first.event_id, second.event_id]
    )
    assert len((await store.list_subscribers(None, 100)).items) == 1


@pytest.mark.postgres
@pytest.mark.parametrize(
    "poison",
    [
        pytest.param("x\x00", id="nul-refused-by-the-driver"),
        pytest.param(
            base64.b64encode(os.urandom(9_000)).decode(), id="over-long-refused-by-the-server"
        ),
    ],
)
async def test_a_statement_postgresql_refuses_fails_alone_in_its_batch(
    pg_url: str, poison: str
) -> None:
    """Ingests sent in one PostgreSQL pipeline: the one PostgreSQL cannot store (a NUL the
    driver refuses, an index row the server refuses) fails on its own; every other one is
    answered as committed and is committed, fan-out included. (Intake refuses such task ids
    before the store; the store must still not let one caller's error reach the others.)"""
    async with opened(store := postgres_store(pg_url)):
        await store.create_subscriber(subscriber())
        await store.ingest(incoming("warm-up"))  # the subscriber list is cached: one batch
        normal = [incoming(f"task-{n}") for n in range(40)]
        bad = incoming(poison, key=f"evolink:{poison}:succeeded:None")
        batch = [*normal[:20], bad, *normal[20:]]
        results = await asyncio.gather(*(store.ingest(e) for e in batch), return_exceptions=True)
        assert isinstance(results[20], Exception)
        for result, event in zip(results[:20] + results[21:], normal, strict=True):
            assert not isinstance(result, BaseException), result
            assert (result.outcome, result.event_id) == ("accepted", event.event_id)
            assert await store.get_event(event.event_id) is not None
        assert len(await deliveries(store)) == 41
        assert await store.get_event(bad.event_id) is None


async def test_an_attempt_record_the_store_cannot_hold_fails_alone(store: Store) -> None:
    """Attempt records sent together: one whose excerpt holds a NUL is stored by SQLite and
    refused by PostgreSQL (its text cannot hold NUL; the worker never sends one, see
    ``storable_text``), and then alone: the others of its batch are recorded."""
    await store.create_subscriber(subscriber())
    for n in range(12):
        await store.ingest(incoming(f"task-{n}"))
    claims = await claim_all(store, time.time() + 1)
    assert len(claims) == 12
    poisoned = dataclasses.replace(attempt(claims[5], "succeeded"), response_excerpt="ok\x00")
    records = [attempt(c, "succeeded") for c in claims]
    records[5] = poisoned
    results = await asyncio.gather(
        *(store.record_attempt(r) for r in records), return_exceptions=True
    )
    assert [r for n, r in enumerate(results) if n != 5] == [None] * 11
    succeeded = {d["id"] for d in await deliveries(store, status="succeeded")}
    if isinstance(store, PostgresStore):
        assert isinstance(results[5], psycopg.DataError)
        assert succeeded == {c.delivery_id for n, c in enumerate(claims) if n != 5}
    else:
        assert results[5] is None
        assert succeeded == {c.delivery_id for c in claims}


async def test_duplicate_writes_nothing(store: Store) -> None:
    await store.create_subscriber(subscriber())
    first = incoming(key="evolink:task-1:succeeded")
    assert (await store.ingest(first)).outcome == "accepted"
    again = incoming(key="evolink:task-1:succeeded")
    result = await store.ingest(again)
    assert (result.outcome, result.event_id, result.deliveries) == (
        "duplicate",
        first.event_id,
        0,
    )
    assert await store.get_event(again.event_id) is None
    assert len((await store.list_events(EventFilter(), None, 100)).items) == 1
    assert len(await deliveries(store)) == 1


async def test_update_after_terminal_is_superseded(store: Store) -> None:
    await store.create_subscriber(subscriber())
    done = incoming(status="succeeded")
    assert (await store.ingest(done)).outcome == "accepted"
    late = incoming(status="running", progress=90)
    result = await store.ingest(late)
    assert (result.outcome, result.event_id, result.deliveries) == (
        "superseded",
        late.event_id,
        0,
    )
    assert (await store.get_event(late.event_id))["relay"] == {"state": "superseded"}  # type: ignore[index]
    # Stored for the record, listed with the emitted ones, never delivered.
    listed = (await store.list_events(EventFilter(task_id="task-1"), None, 10)).items
    assert [json.loads(body)["id"] for body in listed] == [late.event_id, done.event_id]
    assert [d["event_id"] for d in await deliveries(store)] == [done.event_id]


async def test_second_terminal_status_is_superseded(store: Store) -> None:
    await store.create_subscriber(subscriber())
    assert (await store.ingest(incoming(status="succeeded"))).outcome == "accepted"
    failed = incoming(status="failed")
    assert (await store.ingest(failed)).outcome == "superseded"
    assert (await store.get_event(failed.event_id))["relay"]["state"] == "superseded"  # type: ignore[index]
    assert len(await deliveries(store)) == 1
    # The task's terminal status stays the first one, for any later update too.
    assert (await store.ingest(incoming(status="failed", key="other"))).outcome == "superseded"


async def test_updates_before_terminal_are_all_emitted(store: Store) -> None:
    await store.create_subscriber(subscriber())
    outcomes = [
        (await store.ingest(incoming(status=status, progress=progress))).outcome
        for status, progress in (("queued", 0), ("running", 10), ("running", 60))
    ]
    outcomes.append((await store.ingest(incoming(status="succeeded"))).outcome)
    assert outcomes == ["accepted"] * 4
    assert len(await deliveries(store)) == 4
    # Another task is not affected by this one's terminal status.
    assert (await store.ingest(incoming("task-2", "running"))).outcome == "accepted"


async def test_fan_out_respects_filters_and_enabled(store: Store) -> None:
    wanted = {
        "all": subscriber(),
        "evolink": subscriber(providers=("evolink", "apiframe")),
        "exact": subscriber(event_types=("generation.succeeded",)),
        "prefix": subscriber(event_types=("generation.*",)),
        "star": subscriber(event_types=("*",)),
    }
    unwanted = {
        "apiframe": subscriber(providers=("apiframe",)),
        "no-provider": subscriber(providers=()),
        "failed-only": subscriber(event_types=("generation.failed",)),
        "disabled": subscriber(enabled=False),
    }
    for sub in (*wanted.values(), *unwanted.values()):
        await store.create_subscriber(sub)
    event = incoming()
    assert (await store.ingest(event)).deliveries == len(wanted)
    got = {d["subscriber_id"] for d in await deliveries(store, event_id=event.event_id)}
    assert got == {sub.id for sub in wanted.values()}


async def test_fan_out_follows_subscriber_changes(store: Store) -> None:
    """Every change to subscribers is seen by the next ingest (no stale subscriber list)."""
    a, b = subscriber("sub_a"), subscriber("sub_b")
    await store.create_subscriber(a)

    async def targets(task: str) -> set[str]:
        event = incoming(task)
        await store.ingest(event)
        return {d["subscriber_id"] for d in await deliveries(store, event_id=event.event_id)}

    assert await targets("t1") == {"sub_a"}
    await store.create_subscriber(b)
    assert await targets("t2") == {"sub_a", "sub_b"}
    await store.update_subscriber("sub_a", {"enabled": False})
    assert await targets("t3") == {"sub_b"}
    await store.update_subscriber("sub_a", {"enabled": True, "event_types": ["generation.failed"]})
    assert await targets("t4") == {"sub_b"}
    await store.update_subscriber("sub_a", {"event_types": None})
    await store.delete_subscriber("sub_b", time.time())
    assert await targets("t5") == {"sub_a"}


# -- events -------------------------------------------------------------------------------------


async def test_list_events_filters_and_pages_newest_first(store: Store) -> None:
    base = time.time() - 100
    events = [
        incoming("t1", "running", at=base, progress=10),
        incoming("t1", "succeeded", at=base + 10),
        incoming("t2", "failed", at=base + 20),
        incoming("t3", "running", provider="apiframe", at=base + 30, progress=5),
        incoming("t3", "succeeded", provider="apiframe", at=base + 40),
    ]
    for event in events:
        await store.ingest(event)
    newest_first = [e.event_id for e in reversed(events)]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list_events(EventFilter(), cursor, 2)
        seen += [json.loads(body)["id"] for body in page.items]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == newest_first and pages == 3

    async def ids_for(**filters: Any) -> list[str]:
        page = await store.list_events(EventFilter(**filters), None, 100)
        assert page.next_cursor is None
        return [json.loads(body)["id"] for body in page.items]

    assert await ids_for(provider="apiframe") == newest_first[:2]
    assert await ids_for(task_id="t1") == newest_first[3:]
    assert await ids_for(status="succeeded") == [events[4].event_id, events[1].event_id]
    assert await ids_for(since=base + 20) == newest_first[:3]
    assert await ids_for(provider="evolink", status="failed") == [events[2].event_id]
    with pytest.raises(InvalidInput):
        await store.list_events(EventFilter(), "not-a-cursor", 10)


# -- subscribers --------------------------------------------------------------------------------


async def test_subscriber_create_get_list(store: Store) -> None:
    base = time.time() - 50
    subs = [
        subscriber(
            f"sub_{n}",
            providers=("evolink",) if n % 2 else None,
            event_types=("generation.*", "generation.failed") if n == 2 else None,
            at=base + n,
        )
        for n in range(5)
    ]
    for sub in subs:
        await store.create_subscriber(sub)
    assert await store.get_subscriber("sub_2") == subs[2]
    assert await store.get_subscriber("sub_unknown") is None

    listed: list[Subscriber] = []
    cursor = None
    while True:
        page = await store.list_subscribers(cursor, 2)
        listed += page.items
        cursor = page.next_cursor
        if cursor is None:
            break
    assert listed == subs  # oldest first, every field (secrets too) as created
    with pytest.raises(InvalidInput):
        await store.list_subscribers("bm90LWEtY3Vyc29y", 10)


async def test_update_subscriber(store: Store) -> None:
    sub = subscriber(at=time.time() - 10)
    await store.create_subscriber(sub)
    changed = await store.update_subscriber(
        sub.id,
        {
            "url": "https://other.example.com/hook",
            "description": None,
            "providers": ["apiframe"],
            "event_types": ["generation.succeeded"],
        },
    )
    assert changed is not None
    assert changed.url == "https://other.example.com/hook"
    assert changed.description is None
    assert changed.providers == ("apiframe",)
    assert changed.event_types == ("generation.succeeded",)
    assert changed.secrets == sub.secrets and changed.created_at == sub.created_at
    assert changed.updated_at > sub.updated_at
    assert await store.get_subscriber(sub.id) == changed

    disabled = await store.update_subscriber(sub.id, {"enabled": False})
    assert disabled is not None and not disabled.enabled
    assert disabled.disabled_reason == "disabled by an operator"
    enabled = await store.update_subscriber(sub.id, {"enabled": True, "providers": None})
    assert enabled is not None and enabled.enabled and enabled.disabled_reason is None
    assert enabled.providers is None
    assert await store.update_subscriber("sub_unknown", {"enabled": False}) is None


async def test_delete_subscriber_cancels_its_pending_deliveries(store: Store) -> None:
    a, b = subscriber("sub_a"), subscriber("sub_b")
    await store.create_subscriber(a)
    await store.create_subscriber(b)
    await store.ingest(incoming("t1"))
    await store.ingest(incoming("t2"))
    now = time.time() + 1
    claims = await claim_all(store, now)
    done = next(c for c in claims if c.subscriber_id == "sub_a")
    await store.record_attempt(attempt(done, "succeeded", at=now))

    assert await store.delete_subscriber("sub_a", now + 1) is True
    assert await store.get_subscriber("sub_a") is None
    assert await store.delete_subscriber("sub_a", now + 2) is False
    by_id = {d["id"]: d for d in await deliveries(store, subscriber_id="sub_a")}
    assert by_id[done.delivery_id]["status"] == "succeeded"
    (canceled,) = [d for d in by_id.values() if d["id"] != done.delivery_id]
    assert canceled["status"] == "canceled"
    assert canceled["last_error"] == "subscriber deleted"
    assert canceled["next_attempt_at"] is None
    assert canceled["updated_at"] == rfc3339(now + 1)
    assert await deliveries(store, status="canceled") == [canceled]
    assert {d["status"] for d in await deliveries(store, subscriber_id="sub_b")} == {"pending"}
    assert [s.id for s in (await store.list_subscribers(None, 10)).items] == ["sub_b"]
    # Nothing of the deleted subscriber is pending or claimable any more.
    counts = await store.delivery_counts()
    assert (counts["pending"], counts["failed"]) == (2, 0)
    # Canceled is final: a replay does not bring it back.
    assert (await store.replay(DeliveryFilter(), [canceled["id"]], now + 3)).count == 0


async def test_no_delivery_for_a_subscriber_another_process_deleted(
    store: Store, make_store: Callable[[], Store]
) -> None:
    """An ingest whose cached subscriber list predates a removal made by another process (the
    CLI) creates no delivery for the removed subscriber: it could never be claimed."""
    await store.create_subscriber(subscriber("sub_a"))
    await store.create_subscriber(subscriber("sub_b"))
    assert (await store.ingest(incoming("t1"))).deliveries == 2  # the list is cached now
    other = make_store()
    await other.open()
    try:
        assert await other.delete_subscriber("sub_a", time.time()) is True
        assert await other.update_subscriber("sub_b", {"enabled": False}) is not None
    finally:
        await other.close()
    assert (await store.ingest(incoming("t2"))).deliveries == 0
    assert {d["subscriber_id"] for d in await deliveries(store, status="pending")} == {"sub_b"}
    assert len(await deliveries(store, status="canceled")) == 1


async def test_rotate_secret_keeps_previous_until_expiry(store: Store) -> None:
    sub = subscriber()
    await store.create_subscriber(sub)
    (old,) = sub.secrets
    rotated = await store.rotate_secret(sub.id, "whsec_new", time.time() + 3600)
    assert rotated is not None and rotated.secrets == ("whsec_new", old)
    assert (await store.get_subscriber(sub.id)).secrets == ("whsec_new", old)  # type: ignore[union-attr]
    assert (await store.list_subscribers(None, 10)).items[0].secrets == ("whsec_new", old)
    await store.ingest(incoming())
    (claim,) = await claim_all(store, time.time() + 1)
    assert claim.secrets == ("whsec_new", old)

    expired = await store.rotate_secret(sub.id, "whsec_newer", time.time() - 1)
    assert expired is not None and expired.secrets == ("whsec_newer",)
    assert (await store.get_subscriber(sub.id)).secrets == ("whsec_newer",)  # type: ignore[union-attr]
    assert await store.rotate_secret("sub_unknown", "whsec_x", time.time() + 60) is None


# -- claiming -----------------------------------------------------------------------------------


async def test_claim_due_only_due_and_respects_lease(store: Store) -> None:
    sub = subscriber()
    await store.create_subscriber(sub)
    event = incoming()
    await store.ingest(event)
    at = event.received_at
    assert await claim_all(store, at - 1) == []  # not due yet
    (claim,) = await claim_all(store, at + 1)
    assert claim == Claim(
        delivery_id=claim.delivery_id,
        event_id=event.event_id,
        subscriber_id=sub.id,
        url=sub.url,
        secrets=sub.secrets,
        body=event.body,
        cycle_attempts=0,
        trigger="scheduled",
        task_key=f"{event.provider}/{event.task_id}",
    )
    assert await claim_all(store, at + 2) == []  # leased until at + 1 + LEASE
    assert await claim_all(store, at + LEASE) == []
    (again,) = await claim_all(store, at + 1 + LEASE)  # the lease lapsed: claimable again
    assert again.delivery_id == claim.delivery_id
    # A lease is not a state: the delivery is still pending.
    assert (await store.get_delivery(claim.delivery_id))["status"] == "pending"  # type: ignore[index]


async def test_claim_due_oldest_first_and_limit(store: Store) -> None:
    await store.create_subscriber(subscriber())
    base = time.time() - 100
    events = [incoming(f"t{n}", at=base + n) for n in (3, 1, 2, 0)]
    for event in events:
        await store.ingest(event)
    first = await store.claim_due(base + 10, 2, LEASE, frozenset())
    rest = await store.claim_due(base + 10, 10, LEASE, frozenset())
    order = [c.event_id for c in first + rest]
    assert order == [e.event_id for e in sorted(events, key=lambda e: e.received_at)]
    assert len(first) == 2


async def test_claim_due_keeps_per_task_order(store: Store) -> None:
    sub = subscriber()
    await store.create_subscriber(sub)
    base = time.time() - 100
    line = [
        incoming("t1", "running", at=base, progress=10),
        incoming("t1", "running", at=base + 1, progress=50),
        incoming("t1", "succeeded", at=base + 2),
    ]
    other = incoming("t2", at=base + 3)
    for event in (*line, other):
        await store.ingest(event)
    now = base + 10
    # Only the head of each task's line, even though all four are due.
    claims = await claim_all(store, now)
    assert [c.event_id for c in claims] == [line[0].event_id, other.event_id]
    await store.record_attempt(attempt(claims[1], "succeeded", at=now))
    # While the head is in flight, nothing behind it is claimable, even when its lease lapses.
    assert await claim_all(store, now + 1) == []
    head = claims[0]
    # A retry keeps the line blocked until the head is due again and succeeds.
    await store.record_attempt(attempt(head, "pending", at=now, next_attempt_at=now + 50))
    assert await claim_all(store, now + 2) == []
    (retry,) = await claim_all(store, now + 51)
    assert (retry.delivery_id, retry.cycle_attempts) == (head.delivery_id, 1)
    await store.record_attempt(attempt(retry, "succeeded", at=now + 51))
    (second,) = await claim_all(store, now + 52)
    assert second.event_id == line[1].event_id
    # A failed head no longer blocks its line.
    await store.record_attempt(attempt(second, "failed", at=now + 52))
    (third,) = await claim_all(store, now + 53)
    assert third.event_id == line[2].event_id


async def test_per_task_order_is_per_subscriber(store: Store) -> None:
    await store.create_subscriber(subscriber("sub_a"))
    await store.create_subscriber(subscriber("sub_b"))
    base = time.time() - 100
    await store.ingest(incoming("t1", "running", at=base, progress=10))
    await store.ingest(incoming("t1", "succeeded", at=base + 1))
    claims = await claim_all(store, base + 10)
    # One head per subscriber: a slow subscriber does not hold back another one.
    assert sorted(c.subscriber_id for c in claims) == ["sub_a", "sub_b"]
    assert len({c.event_id for c in claims}) == 1


async def test_claim_due_skips_excluded_and_disabled_subscribers(store: Store) -> None:
    for name in ("sub_a", "sub_b", "sub_c"):
        await store.create_subscriber(subscriber(name))
    await store.ingest(incoming())
    await store.update_subscriber("sub_c", {"enabled": False})
    now = time.time() + 1
    (claim,) = await claim_all(store, now, exclude={"sub_a"})
    assert claim.subscriber_id == "sub_b"
    (claim,) = await claim_all(store, now)
    assert claim.subscriber_id == "sub_a"
    assert await claim_all(store, now) == []
    # Re-enabled, its pending delivery is claimable again.
    await store.update_subscriber("sub_c", {"enabled": True})
    (claim,) = await claim_all(store, now)
    assert claim.subscriber_id == "sub_c"


# -- attempts -----------------------------------------------------------------------------------


async def test_record_attempt_outcomes(store: Store) -> None:
    await store.create_subscriber(subscriber())
    base = time.time() - 100
    for n in range(3):
        await store.ingest(incoming(f"t{n}", at=base + n))
    now = base + 10
    ok, retry, fail = await claim_all(store, now)
    await store.record_attempt(attempt(ok, "succeeded", at=now))
    await store.record_attempt(attempt(retry, "pending", at=now, next_attempt_at=now + 30))
    await store.record_attempt(
        attempt(fail, "failed", at=now + 0.5, error="connection refused", status_code=None)
    )

    got_ok = await store.get_delivery(ok.delivery_id)
    assert got_ok is not None
    assert (got_ok["status"], got_ok["attempt_count"], got_ok["last_error"]) == (
        "succeeded",
        1,
        None,
    )
    assert got_ok["next_attempt_at"] is None and got_ok["updated_at"] == rfc3339(now)
    got_retry = await store.get_delivery(retry.delivery_id)
    assert got_retry is not None
    assert (got_retry["status"], got_retry["next_attempt_at"], got_retry["last_error"]) == (
        "pending",
        rfc3339(now + 30),
        "HTTP 500",
    )
    got_fail = await store.get_delivery(fail.delivery_id)
    assert got_fail is not None
    assert (got_fail["status"], got_fail["last_error"]) == ("failed", "connection refused")
    assert got_fail["updated_at"] == rfc3339(now + 0.5)

    # The retry is due at its time, with its lease freed by the attempt.
    assert await claim_all(store, now + 29) == []
    (again,) = await claim_all(store, now + 30)
    assert (again.delivery_id, again.cycle_attempts, again.trigger) == (
        retry.delivery_id,
        1,
        "scheduled",
    )


async def test_get_delivery_lists_attempts_oldest_first(store: Store) -> None:
    await store.create_subscriber(subscriber())
    event = incoming()
    await store.ingest(event)
    now = event.received_at + 1
    (claim,) = await claim_all(store, now)
    await store.record_attempt(
        attempt(claim, "pending", at=now, status_code=503, next_attempt_at=now + 1)
    )
    (claim,) = await claim_all(store, now + 1)
    await store.record_attempt(attempt(claim, "succeeded", at=now + 1))
    delivery = await store.get_delivery(claim.delivery_id)
    assert delivery is not None
    assert delivery["attempt_count"] == 2
    assert delivery["attempts"] == [
        {
            "attempted_at": rfc3339(now),
            "trigger": "scheduled",
            "status_code": 503,
            "latency_ms": 12.5,
            "error": None,
            "response_excerpt": "upstream unavailable",
        },
        {
            "attempted_at": rfc3339(now + 1),
            "trigger": "scheduled",
            "status_code": 204,
            "latency_ms": 12.5,
            "error": None,
            "response_excerpt": None,
        },
    ]
    assert {k: v for k, v in delivery.items() if k != "attempts"} in await deliveries(store)
    assert await store.get_delivery("dlv_unknown") is None


async def test_gone_disables_the_subscriber(store: Store) -> None:
    sub = subscriber()
    await store.create_subscriber(sub)
    await store.ingest(incoming("t1"))
    await store.ingest(incoming("t2"))
    now = time.time() + 1
    first, _ = await claim_all(store, now, lease=0.5)
    reason = "the subscriber answered 410 Gone"
    await store.record_attempt(attempt(first, "failed", at=now, status_code=410, disable=reason))
    disabled = await store.get_subscriber(sub.id)
    assert disabled is not None and not disabled.enabled
    assert disabled.disabled_reason == reason
    assert (await store.get_delivery(first.delivery_id))["status"] == "failed"  # type: ignore[index]
    # Its other delivery stays pending but is not claimed; new events do not fan out to it.
    assert await claim_all(store, now + 1) == []
    assert (await store.ingest(incoming("t3"))).deliveries == 0


async def test_record_attempt_does_not_revive_a_deleted_subscribers_delivery(store: Store) -> None:
    """An attempt in flight while its subscriber is deleted leaves the delivery canceled."""
    await store.create_subscriber(subscriber("sub_a"))
    await store.ingest(incoming())
    now = time.time() + 1
    (claim,) = await claim_all(store, now)
    await store.delete_subscriber("sub_a", now)
    await store.record_attempt(attempt(claim, "pending", at=now, next_attempt_at=now + 1))
    delivery = await store.get_delivery(claim.delivery_id)
    assert delivery is not None
    assert len(delivery["attempts"]) == 1
    assert (delivery["status"], delivery["last_error"]) == ("canceled", "subscriber deleted")
    assert (await store.delivery_counts())["pending"] == 0


async def test_release_leases(store: Store) -> None:
    await store.create_subscriber(subscriber())
    for n in range(3):
        await store.ingest(incoming(f"t{n}"))
    now = time.time() + 1
    claims = await claim_all(store, now)
    assert len(claims) == 3
    assert await store.release_leases([claims[0].delivery_id]) == 1
    (again,) = await claim_all(store, now)
    assert again.delivery_id == claims[0].delivery_id
    assert await store.release_leases([]) == 0
    assert await store.release_leases(None) == 3
    assert len(await claim_all(store, now)) == 3
    # Finished deliveries hold no lease.
    for claim in claims:
        await store.record_attempt(attempt(claim, "succeeded", at=now))
    assert await store.release_leases(None) == 0


# -- listing, replay, redelivery, counts --------------------------------------------------------


async def test_list_deliveries_filters_and_pages_newest_first(store: Store) -> None:
    await store.create_subscriber(subscriber("sub_a"))
    await store.create_subscriber(subscriber("sub_b"))
    base = time.time() - 100
    events = [incoming(f"t{n}", at=base + n) for n in range(3)]
    for event in events:
        await store.ingest(event)
    listed = await deliveries(store)
    assert len(listed) == 6
    now = base + 10
    claims = {(c.event_id, c.subscriber_id): c for c in await claim_all(store, now)}
    await store.record_attempt(attempt(claims[(events[0].event_id, "sub_a")], "failed", at=now))
    await store.record_attempt(
        attempt(claims[(events[1].event_id, "sub_b")], "succeeded", at=now + 5)
    )

    pages = []
    cursor = None
    while True:
        page = await store.list_deliveries(DeliveryFilter(), cursor, 4)
        pages.append(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [len(p) for p in pages] == [4, 2]
    assert [d["id"] for p in pages for d in p] == [d["id"] for d in listed]
    # Newest first: the last event's deliveries lead.
    assert {d["event_id"] for d in listed[:2]} == {events[2].event_id}

    async def pairs(**filters: Any) -> set[tuple[str, str]]:
        return {(d["event_id"], d["subscriber_id"]) for d in await deliveries(store, **filters)}

    assert await pairs(status="failed") == {(events[0].event_id, "sub_a")}
    assert await pairs(status="succeeded") == {(events[1].event_id, "sub_b")}
    assert len(await pairs(status="pending")) == 4
    assert await pairs(subscriber_id="sub_b", status="pending") == {
        (events[0].event_id, "sub_b"),
        (events[2].event_id, "sub_b"),
    }
    assert await pairs(event_id=events[2].event_id) == {
        (events[2].event_id, "sub_a"),
        (events[2].event_id, "sub_b"),
    }
    # since/until select on the last change.
    assert await pairs(since=now) == {(events[0].event_id, "sub_a"), (events[1].event_id, "sub_b")}
    assert await pairs(since=now, until=now + 5) == {(events[0].event_id, "sub_a")}
    assert len(await pairs(until=now)) == 4
    with pytest.raises(InvalidInput):
        await store.list_deliveries(DeliveryFilter(), "WzEsMl0", 10)


async def _failed_delivery(store: Store, subscriber_id: str, task: str, now: float) -> str:
    await store.ingest(incoming(task, at=now - 5))
    claims = await claim_all(store, now)
    (claim,) = [c for c in claims if c.subscriber_id == subscriber_id]
    for other in claims:
        if other is not claim:
            await store.release_leases([other.delivery_id])
    await store.record_attempt(attempt(claim, "failed", at=now))
    return claim.delivery_id


async def test_replay_by_ids_starts_a_fresh_cycle(store: Store) -> None:
    await store.create_subscriber(subscriber("sub_a"))
    now = time.time()
    failed = await _failed_delivery(store, "sub_a", "t1", now)
    await store.ingest(incoming("t2", at=now - 1))
    (pending,) = await deliveries(store, status="pending")
    later = now + 60
    assert (
        await store.replay(DeliveryFilter(), [failed, pending["id"], "dlv_unknown"], later)
    ).count == 1
    delivery = await store.get_delivery(failed)
    assert delivery is not None
    assert (delivery["status"], delivery["attempt_count"], delivery["last_error"]) == (
        "pending",
        1,
        "HTTP 500",
    )
    assert delivery["next_attempt_at"] == rfc3339(later)
    assert delivery["updated_at"] == rfc3339(later)
    assert (await store.replay(DeliveryFilter(), [failed], later)).count == 0  # no longer failed
    claims = await claim_all(store, later)
    (replayed,) = [c for c in claims if c.delivery_id == failed]
    assert (replayed.cycle_attempts, replayed.trigger) == (0, "replay")
    await store.record_attempt(attempt(replayed, "succeeded", at=later))
    assert (await store.get_delivery(failed))["attempts"][-1]["trigger"] == "replay"  # type: ignore[index]
    assert (await store.replay(DeliveryFilter(), [], later)).count == 0


async def test_replay_by_filter_only_failed_of_enabled_subscribers(store: Store) -> None:
    for name in ("sub_a", "sub_b", "sub_off"):
        await store.create_subscriber(subscriber(name))
    base = time.time() - 100
    await store.ingest(incoming("t1", at=base))
    claims = await claim_all(store, base + 1)
    for claim in claims:
        await store.record_attempt(attempt(claim, "failed", at=base + 2))
    await store.ingest(incoming("t2", at=base + 3))  # pending ones: never replayed
    await store.update_subscriber("sub_off", {"enabled": False})

    assert (await store.replay(DeliveryFilter(subscriber_id="sub_a"), None, base + 10)).count == 1
    # since/until select on the last change; the replayed one changed at base + 10.
    assert (await store.replay(DeliveryFilter(until=base + 2), None, base + 20)).count == 0
    assert (
        await store.replay(DeliveryFilter(since=base + 2, until=base + 3), None, base + 20)
    ).count == 1
    assert {d["subscriber_id"] for d in await deliveries(store, status="failed")} == {"sub_off"}
    assert (await store.replay(DeliveryFilter(), None, base + 30)).count == 0
    counts = await store.delivery_counts()
    assert (counts["pending"], counts["failed"]) == (5, 1)


async def test_redeliver_emitted_events_only(store: Store) -> None:
    await store.create_subscriber(subscriber("sub_a"))
    await store.create_subscriber(subscriber("sub_b"))
    done = incoming("t1", "succeeded")
    await store.ingest(done)
    late = incoming("t1", "running", progress=99)
    await store.ingest(late)
    now = time.time() + 1
    assert (await store.redeliver(done.event_id, ["sub_a", "sub_b"], now)).count == 2
    assert (await store.redeliver(late.event_id, ["sub_a"], now)).count == 0
    assert (await store.redeliver("evt_unknown", ["sub_a"], now)).count == 0
    assert (await store.redeliver(done.event_id, [], now)).count == 0
    fresh = [
        d
        for d in await deliveries(store, event_id=done.event_id)
        if d["created_at"] == rfc3339(now)
    ]
    assert sorted(d["subscriber_id"] for d in fresh) == ["sub_a", "sub_b"]
    assert all(d["status"] == "pending" and d["attempt_count"] == 0 for d in fresh)
    # A redelivery queues behind the original delivery of the same task (per-task order).
    claims = await claim_all(store, now + 1)
    assert {c.delivery_id for c in claims}.isdisjoint({d["id"] for d in fresh})
    for claim in claims:
        await store.record_attempt(attempt(claim, "succeeded", at=now + 1))
    claims = await claim_all(store, now + 2)
    assert {c.delivery_id for c in claims} == {d["id"] for d in fresh}
    assert {c.trigger for c in claims} == {"scheduled"}


async def _line(store: Store, now: float) -> tuple[str, str]:
    """sub_a's line for task t: ``running`` failed, then ``succeeded`` delivered."""
    await store.ingest(incoming("t", "running", at=now - 10, progress=50))
    (running,) = await claim_all(store, now - 9)
    await store.record_attempt(attempt(running, "failed", at=now - 9))
    await store.ingest(incoming("t", "succeeded", at=now - 8))
    (done,) = await claim_all(store, now - 7)
    await store.record_attempt(attempt(done, "succeeded", at=now - 7))
    return running.delivery_id, done.delivery_id


async def test_replay_never_sends_an_older_status_after_a_newer_one(store: Store) -> None:
    """A failed ``running`` is not replayed once ``succeeded`` reached the subscriber, by
    id or by filter; ``force`` replays it all the same."""
    await store.create_subscriber(subscriber("sub_a"))
    now = time.time()
    running, done = await _line(store, now)
    other = await _failed_delivery(store, "sub_a", "t-other", now)

    result = await store.replay(DeliveryFilter(), [running, other], now)
    assert (result.count, result.newer) == (1, {running: done})
    assert (await store.get_delivery(running))["status"] == "failed"  # type: ignore[index]
    result = await store.replay(DeliveryFilter(subscriber_id="sub_a"), None, now)
    assert (result.count, result.newer) == (0, {running: done})

    result = await store.replay(DeliveryFilter(), [running], now, force=True)
    assert (result.count, result.newer) == (1, {})
    assert (await store.get_delivery(running))["status"] == "pending"  # type: ignore[index]


async def test_replay_waits_for_no_later_event_still_pending(store: Store) -> None:
    """A later delivery that failed, or waits without being in flight, does not hold a replay
    back: the replayed one keeps its place and goes first. One in flight does."""
    await store.create_subscriber(subscriber("sub_a"))
    now = time.time()
    await store.ingest(incoming("t", "running", at=now - 10, progress=50))
    (running,) = await claim_all(store, now - 9)
    await store.record_attempt(attempt(running, "failed", at=now - 9))
    await store.ingest(incoming("t", "succeeded", at=now - 8))
    (done,) = await claim_all(store, now - 7)  # in flight: leased until now - 7 + LEASE
    result = await store.replay(DeliveryFilter(), [running.delivery_id], now)
    assert (result.count, result.newer) == (0, {running.delivery_id: done.delivery_id})
    await store.release_leases([done.delivery_id])  # waiting, no longer in flight
    result = await store.replay(DeliveryFilter(), [running.delivery_id], now)
    assert (result.count, result.newer) == (1, {})
    # The replayed one goes first; the later one waits behind it.
    claims = await claim_all(store, now)
    assert [c.delivery_id for c in claims] == [running.delivery_id]


async def test_redeliver_never_queues_an_older_event_behind_a_newer_one(store: Store) -> None:
    """Redelivering ``running`` to a subscriber that has a delivery of ``succeeded`` (in
    any status) is refused for that subscriber unless forced; others get it."""
    await store.create_subscriber(subscriber("sub_a"))
    now = time.time()
    _, done = await _line(store, now)
    await store.create_subscriber(subscriber("sub_new"))  # added after both events
    (processing,) = [e for e in await _events_of(store, "t") if e["type"] != "generation.succeeded"]

    result = await store.redeliver(processing["id"], ["sub_a", "sub_new"], now)
    assert (result.count, result.newer) == (1, {"sub_a": done})
    assert [d["subscriber_id"] for d in await deliveries(store, status="pending")] == ["sub_new"]
    result = await store.redeliver(processing["id"], ["sub_a"], now, force=True)
    assert (result.count, result.newer) == (1, {})


async def _events_of(store: Store, task: str) -> list[dict[str, Any]]:
    page = await store.list_events(EventFilter(task_id=task), None, 100)
    return [json.loads(item) for item in page.items]


async def test_ops_sessions_live_until_revoked_or_expired(store: Store) -> None:
    """A console session is live until revoked (sign-out) or past its expiry; a new one
    clears those long expired."""
    now = time.time()
    await store.create_ops_session("ses_a", now, now + 3600)
    await store.create_ops_session("ses_b", now, now + 60)
    assert await store.ops_session_live("ses_a", now + 1)
    assert not await store.ops_session_live("ses_unknown", now + 1)
    assert not await store.ops_session_live("ses_b", now + 61)  # expired
    await store.revoke_ops_session("ses_a", now + 2)
    assert not await store.ops_session_live("ses_a", now + 3)
    await store.revoke_ops_session("ses_a", now + 4)  # twice: no harm
    await store.revoke_ops_session("ses_unknown", now + 4)
    assert await store.ops_session_live("ses_b", now + 5)
    await store.create_ops_session("ses_c", now + 120, now + 3720)  # ses_b is gone now
    assert await store.ops_session_live("ses_c", now + 121)
    assert not await store.ops_session_live("ses_b", now + 5)


async def test_delivery_counts(store: Store) -> None:
    assert await store.delivery_counts() == {
        "pending": 0,
        "failed": 0,
        "oldest_pending_seconds": None,
    }
    await store.create_subscriber(subscriber())
    oldest = time.time() - 120
    await store.ingest(incoming("t1", at=oldest))
    await store.ingest(incoming("t2", at=oldest + 60))
    await store.ingest(incoming("t3", at=oldest + 100))
    claims = await claim_all(store, oldest + 110)
    await store.record_attempt(attempt(claims[0], "failed", at=oldest + 110))
    await store.record_attempt(attempt(claims[1], "succeeded", at=oldest + 110))
    counts = await store.delivery_counts()
    assert (counts["pending"], counts["failed"]) == (1, 1)
    # The oldest pending delivery was created at oldest + 100.
    assert 20 - 5 < counts["oldest_pending_seconds"] < 20 + 5


async def test_activity_counts_what_happened_since(store: Store) -> None:
    empty = await store.activity(time.time() - 3600)
    assert empty == {
        "events": {},
        "deliveries": {"pending": 0, "succeeded": 0, "failed": 0},
        "oldest_pending": None,
    }
    await store.create_subscriber(subscriber("sub_a"))
    now = time.time()
    await store.ingest(incoming("t-old", at=now - 7200))  # before the window
    await store.ingest(incoming("t1", "running", at=now - 50, progress=10))
    await store.ingest(incoming("t1", at=now - 40))
    await store.ingest(incoming("t1", "failed", at=now - 30))  # superseded
    await store.ingest(incoming("t2", at=now - 20))
    claims = {c.event_id: c for c in await claim_all(store, now - 10, limit=1)}
    (claim,) = claims.values()
    await store.record_attempt(attempt(claim, "failed", at=now - 10))
    activity = await store.activity(now - 3600)
    assert activity["events"] == {
        "generation.running": {"emitted": 1, "superseded": 0},
        "generation.succeeded": {"emitted": 2, "superseded": 0},
        "generation.failed": {"emitted": 0, "superseded": 1},
    }
    # The delivery of t-old failed just now: a change inside the window.
    assert activity["deliveries"] == {"pending": 3, "succeeded": 0, "failed": 1}
    oldest = activity["oldest_pending"]
    assert oldest is not None and oldest["status"] == "pending"
    assert oldest["created_at"] == rfc3339(now - 50)
    assert (await store.activity(now))["deliveries"]["pending"] == 0


async def test_delivery_details_filter_by_provider_with_attempts(store: Store) -> None:
    await store.create_subscriber(subscriber("sub_a"))
    await store.create_subscriber(subscriber("sub_b"))
    now = time.time()
    await store.ingest(incoming("t1", at=now - 30))
    await store.ingest(incoming("t2", provider="apiframe", at=now - 20))
    for claim in await claim_all(store, now - 10):
        outcome = "succeeded" if claim.subscriber_id == "sub_b" else "pending"
        await store.record_attempt(attempt(claim, outcome, at=now - 10, next_attempt_at=now - 5))
    for claim in await claim_all(store, now - 1):
        await store.record_attempt(attempt(claim, "failed", at=now - 1, error="timed out"))

    failed = await store.delivery_details(DeliveryFilter(status="failed"), None, 10)
    assert [(d["subscriber_id"], d["provider"]) for d in failed] == [
        ("sub_a", "apiframe"),
        ("sub_a", "evolink"),
    ]
    first = failed[1]
    assert first["task_id"] == "t1"
    assert first["event_type"] == "generation.succeeded"
    assert [(a["status_code"], a["error"]) for a in first["attempts"]] == [
        (500, None),
        (None, "timed out"),
    ]
    assert first["attempts"][0]["response_excerpt"] == "upstream unavailable"
    assert first["attempts"][0]["latency_ms"] == 12.5
    # The same JSON as get_delivery, plus the event's fields.
    plain = await store.get_delivery(first["id"])
    assert plain is not None
    assert {k: first[k] for k in plain} == plain
    only = await store.delivery_details(DeliveryFilter(status="failed"), "evolink", 10)
    assert [d["id"] for d in only] == [first["id"]]
    assert await store.delivery_details(DeliveryFilter(subscriber_id="sub_b"), "evolink", 10)
    assert await store.delivery_details(DeliveryFilter(since=now), None, 10) == []
    assert len(await store.delivery_details(DeliveryFilter(), None, 3)) == 3


async def test_active_watch_counts_by_provider(store: Store) -> None:
    from service.store.watch_model import Watch

    assert await store.active_watch_counts() == {}
    now = time.time()

    def watch(provider: str, task: str) -> Watch:
        return Watch(
            id=ids.new_id("wat"),
            provider=provider,
            task_id=task,
            origin="api",
            state="active",
            metadata={},
            created_at=now,
            updated_at=now,
            deadline_at=now + 3600,
            next_poll_at=now + 60,
        )

    for provider, task in (("evolink", "t1"), ("evolink", "t2"), ("rivya", "t3")):
        await store.create_watch(watch(provider, task))
    (canceled, _) = await store.create_watch(watch("rivya", "t4"))
    await store.cancel_watch(canceled.id, now)
    assert await store.active_watch_counts() == {"evolink": 2, "rivya": 1}


async def test_reopen_keeps_everything(make_store: Callable[[], Store]) -> None:
    first = make_store()
    await first.open()
    try:
        await first.create_subscriber(subscriber("sub_a"))
        event = incoming()
        await first.ingest(event)
        assert await first.get_or_create_meta("k", "v") == "v"
    finally:
        await first.close()
    second = make_store()
    await second.open()  # migrations already applied: nothing to do, nothing lost
    try:
        assert await second.get_meta("k") == "v"
        assert (await second.get_event(event.event_id)) is not None
        assert (await second.ingest(incoming(key=event.dedup_key))).outcome == "duplicate"
        assert (await second.ingest(incoming("task-2"))).deliveries == 1
    finally:
        await second.close()


async def test_closed_store_is_unavailable(make_store: Callable[[], Store]) -> None:
    closed = make_store()
    with pytest.raises(StorageUnavailable):
        await closed.get_meta("k")
    await closed.open()
    await closed.close()
    with pytest.raises(StorageUnavailable):
        await closed.ingest(incoming())


# -- PostgreSQL: several replicas on one database -----------------------------------------------


@contextlib.asynccontextmanager
async def opened(*stores: PostgresStore) -> AsyncIterator[None]:
    try:
        await asyncio.gather(*(s.open() for s in stores))
        yield
    finally:
        for s in stores:
            await s.close()


@pytest.mark.postgres
async def test_replay_is_not_overtaken_by_a_claim_of_the_later_delivery(pg_url: str) -> None:
    """A worker leasing ``succeeded`` while ``running`` is replayed: the replay waits for
    that claim to commit, then sees it in flight and leaves ``running`` failed."""
    store = postgres_store(pg_url)
    async with opened(store):
        await store.create_subscriber(subscriber("sub_a"))
        now = time.time()
        await store.ingest(incoming("t", "running", at=now - 10, progress=50))
        (running,) = await claim_all(store, now - 9)
        await store.record_attempt(attempt(running, "failed", at=now - 9))
        await store.ingest(incoming("t", "succeeded", at=now - 8))
        (done,) = await deliveries(store, status="pending")
        async with await psycopg.AsyncConnection.connect(pg_url) as worker:
            async with worker.transaction():  # a claim, between its row lock and its commit
                await worker.execute(
                    "SELECT 1 FROM deliveries WHERE id = %s FOR UPDATE", (done["id"],)
                )
                replay = asyncio.create_task(
                    store.replay(DeliveryFilter(), [running.delivery_id], now)
                )
                deadline = time.monotonic() + 10
                while not replay.done() and time.monotonic() < deadline:
                    cursor = await worker.execute(  # is a session waiting for this one?
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
                    )
                    if (await cursor.fetchone())[0]:  # type: ignore[index]
                        break
                    await asyncio.sleep(0.02)
                await worker.execute(
                    "UPDATE deliveries SET lease_until = %s WHERE id = %s", (now + 30, done["id"])
                )
            result = await replay
        assert (result.count, result.newer) == (0, {running.delivery_id: done["id"]})
        assert (await store.get_delivery(running.delivery_id))["status"] == "failed"  # type: ignore[index]


@pytest.mark.postgres
async def test_concurrent_claims_never_share_a_delivery(pg_url: str) -> None:
    """Workers of two replicas claim at once: each delivery once, and only line heads."""
    first, second = postgres_store(pg_url), postgres_store(pg_url)
    async with opened(first, second):
        await first.create_subscriber(subscriber("sub_a"))
        await first.create_subscriber(subscriber("sub_b"))
        base = time.time() - 100
        heads = set()
        for n in range(60):
            head = incoming(f"t{n}", "running", at=base + n * 0.01, progress=10)
            await first.ingest(head)
            heads.add(head.event_id)
            await first.ingest(incoming(f"t{n}", "succeeded", at=base + n * 0.01 + 0.005))
        claimed: list[list[Claim]] = []

        async def worker(store: PostgresStore) -> None:
            mine: list[Claim] = []
            while batch := await store.claim_due(base + 10, 7, LEASE, frozenset()):
                mine += batch
            claimed.append(mine)

        await asyncio.gather(*(worker(s) for s in (first, second) for _ in range(4)))
        every = [c.delivery_id for mine in claimed for c in mine]
        assert len(every) == len(set(every)) == 120  # 60 heads x 2 subscribers, no repeats
        assert {c.event_id for mine in claimed for c in mine} == heads
        assert sum(1 for mine in claimed if mine) > 1  # the work was actually shared
        assert await claim_all(first, base + 10) == []


@pytest.mark.postgres
async def test_concurrent_ingest_of_one_callback_accepts_it_once(pg_url: str) -> None:
    first, second = postgres_store(pg_url), postgres_store(pg_url)
    async with opened(first, second):
        await first.create_subscriber(subscriber())
        for n in range(25):
            key = f"evolink:t{n}:succeeded"
            a, b = incoming(f"t{n}", key=key), incoming(f"t{n}", key=key)
            results = await asyncio.gather(first.ingest(a), second.ingest(b))
            assert sorted(r.outcome for r in results) == ["accepted", "duplicate"]
            assert results[0].event_id == results[1].event_id
            assert sum(r.deliveries for r in results) == 1
        assert len((await first.list_events(EventFilter(), None, 100)).items) == 25
        assert (await first.delivery_counts())["pending"] == 25


@pytest.mark.postgres
async def test_concurrent_terminal_statuses_emit_only_one(pg_url: str) -> None:
    first, second = postgres_store(pg_url), postgres_store(pg_url)
    async with opened(first, second):
        await first.create_subscriber(subscriber())
        for n in range(25):
            results = await asyncio.gather(
                first.ingest(incoming(f"t{n}", "succeeded")),
                second.ingest(incoming(f"t{n}", "failed")),
            )
            assert sorted(r.outcome for r in results) == ["accepted", "superseded"]
            emitted = [r for r in results if r.outcome == "accepted"]
            assert emitted[0].deliveries == 1
        assert (await first.delivery_counts())["pending"] == 25


@pytest.mark.postgres
async def test_replicas_opening_at_once_migrate_once(pg_url: str) -> None:
    stores = [postgres_store(pg_url) for _ in range(4)]
    async with opened(*stores):
        for n, store in enumerate(stores):
            await store.ingest(incoming(f"t{n}"))
        assert len((await stores[0].list_events(EventFilter(), None, 10)).items) == 4
    async with opened(postgres_store(pg_url)):
        pass
    with psycopg.connect(pg_url) as conn:
        versions = conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
    assert versions == [(v,) for v in range(1, len(POSTGRES_MIGRATIONS) + 1)]


async def test_unreachable_postgres_is_storage_unavailable() -> None:
    """A closed port: ``open()`` gives up after its bounded wait (needs no server)."""
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", open_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as raised:
        await store.open()
    assert time.monotonic() - started < 5
    assert "127.0.0.1:1" in raised.value.message
    with pytest.raises(StorageUnavailable):
        await store.ingest(incoming())
    await store.close()


class TcpProxy:
    """A loopback TCP proxy to PostgreSQL that can be cut and restored: a server outage."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


class ThreadedProxy:
    """``TcpProxy`` on its own event loop thread, cut and restored from a synchronous test."""

    def __init__(self, url: str) -> None:
        params = conninfo_to_dict(url)
        self.proxy = TcpProxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432)))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.proxy.start())
        # The same URL (schema options included), through the proxy's port.
        self.url = url.replace(f":{params.get('port', 5432)}/", f":{self.proxy.port}/", 1)
        assert self.url != url

    def call(self, coroutine: object) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)  # type: ignore[arg-type]

    def cut(self) -> None:
        self.call(self.proxy.stop())

    def restore(self) -> None:
        self.call(self.proxy.start())

    def close(self) -> None:
        if self.proxy.server is not None:
            self.cut()

        async def end_the_rest() -> None:  # connections' pipes still running
            rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self.call(end_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()  # its self-pipe sockets too, or they leak (a ResourceWarning later)


@pytest.mark.postgres
async def test_outage_is_storage_unavailable_then_recovers(pg_url: str) -> None:
    """While the server is away every operation answers StorageUnavailable (HTTP 503) within
    the pool timeout; once it is back the store works again without being reopened."""
    params = conninfo_to_dict(pg_url)
    proxy = TcpProxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432)))
    await proxy.start()
    url = make_conninfo(pg_url, host="127.0.0.1", hostaddr="127.0.0.1", port=str(proxy.port))
    store = postgres_store(url, pool_timeout=1.0, reconnect_timeout=3.0)
    try:
        await store.open()
        await store.create_subscriber(subscriber())
        assert (await store.ingest(incoming("t1"))).outcome == "accepted"

        await proxy.stop()
        operations = (
            lambda: store.ingest(incoming("t2")),
            store.ping,
            store.delivery_counts,
            lambda: store.claim_due(time.time(), 10, LEASE, frozenset()),
        )
        for operation in operations:
            started = time.monotonic()
            with pytest.raises(StorageUnavailable):
                await operation()
            assert time.monotonic() - started < 5

        await proxy.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                result = await store.ingest(incoming("t2"))
                break
            except StorageUnavailable:
                assert time.monotonic() < deadline, "the store did not reconnect"
                await asyncio.sleep(0.2)
        assert result.outcome == "accepted"  # the failed attempt wrote nothing
        assert (await store.delivery_counts())["pending"] == 2
    finally:
        await store.close()
        if proxy.server is not None:
            await proxy.stop()


@pytest.mark.postgres
async def test_connection_dropped_while_idle_is_replaced(pg_url: str) -> None:
    """A pooled connection the server dropped while it sat idle costs no request a 503."""
    name = f"relay-test-{uuid.uuid4().hex[:8]}"
    store = postgres_store(make_conninfo(pg_url, application_name=name))
    async with opened(store):
        await store.ingest(incoming("t1"))
        await asyncio.sleep(1.2)  # idle long enough to be checked on the next checkout
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (name,),
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        assert (await store.ingest(incoming("t2"))).outcome == "accepted"


def test_open_store_picks_postgres_for_postgresql_urls() -> None:
    for url in ("postgresql://relay@db:5432/relay", "postgres://relay@db/relay"):
        assert isinstance(open_store(url), PostgresStore)
    assert isinstance(open_store("sqlite:///relay.db"), SQLiteStore)
    with pytest.raises(ConfigError):
        open_store("mysql://relay@db/relay")


@pytest.mark.postgres
def test_two_relays_share_one_database(
    pg_url: str, relay_factory: Callable[..., RelayServer]
) -> None:
    """Two replicas, both receiving and both delivering: each event reaches the subscriber
    exactly once, in per-task order, and a callback sent to both replicas counts once."""
    first = relay_factory(database_url=pg_url)
    second = relay_factory(database_url=pg_url)
    sink = SubscriberServer().start()
    try:
        answer = first.add_subscriber(sink.url)
        sink.secrets.append(str(answer["secret"]))
        url = first.mint(reusable=True)
        path = url[len(first.base_url) :]
        expected: dict[str, list[str]] = {}
        for n in range(6):
            task = f"task-{n}"
            for status, progress in (("processing", 50), ("completed", 100)):
                payload = {**EVOLINK_COMPLETED, "id": task, "status": status, "progress": progress}
                replies = [relay.client.post(path, json=payload) for relay in (first, second)]
                assert [r.status_code for r in replies] == [200, 200], replies[1].text
                answers = [r.json() for r in replies]
                assert [a["duplicate"] for a in answers] == [False, True]
                assert answers[0]["event_id"] == answers[1]["event_id"]
                expected.setdefault(task, []).append(answers[0]["event_id"])
        receipts = sink.wait_for(12, timeout=20)
        time.sleep(0.5)  # a second delivery of anything would arrive by now
        assert not sink.errors
        received = [r.event_id for r in sink.receipts]
        assert sorted(received) == sorted(i for ids_ in expected.values() for i in ids_)
        for task, event_ids in expected.items():
            assert [r.event_id for r in receipts if r.data["task_id"] == task] == event_ids
    finally:
        sink.stop()


@pytest.mark.postgres
def test_a_fresh_schema_outlives_the_relays_on_it(
    relay_factory: Callable[..., RelayServer],
) -> None:
    """Its relays are stopped before it is dropped, even when ``relay_factory`` would stop them
    only later (a test listing ``database`` after it): a relay left running claims while the
    DROP takes its tables one by one, and the two deadlock on their table locks."""
    with fresh_schema() as url:
        relay = relay_factory(database_url=url)
        other = relay_factory()  # on SQLite: not this schema's to stop
        assert relay.client.get("/readyz").status_code == 200
    assert not relay.thread.thread.is_alive()
    assert other.thread.thread.is_alive() and other.client.get("/readyz").status_code == 200


# -- retention ----------------------------------------------------------------------------------


async def test_prune_removes_old_finished_events_only(store: Store) -> None:
    """Old delivered events go with their attempts; pending ones stay, and so do failed ones
    (they wait for an operator) unless they failed before ``failed_before``; the limit bounds
    each batch."""
    await store.create_subscriber(subscriber("sub_p"))
    old = time.time() - 40 * 86_400
    cutoff = time.time() - 30 * 86_400
    ids_by_name = {}
    for name in ("delivered", "pending", "failed_recently", "failed_long_ago", "delivered_2"):
        result = await store.ingest(incoming(f"t-{name}", at=old))
        ids_by_name[name] = result.event_id
    recent = await store.ingest(incoming("t-recent"))
    claims = {c.event_id: c for c in await claim_all(store, time.time() + 1)}
    names = {v: k for k, v in ids_by_name.items()}
    for event_id, claim in claims.items():
        name = names.get(event_id)
        if name in ("delivered", "delivered_2"):
            await store.record_attempt(attempt(claim, "succeeded", at=old + 1))
        elif name == "failed_long_ago":
            await store.record_attempt(attempt(claim, "failed", at=old + 1))
        elif name == "failed_recently":
            await store.record_attempt(attempt(claim, "failed"))
        elif name == "pending":
            await store.record_attempt(
                attempt(claim, "pending", at=old + 1, next_attempt_at=time.time() + 3600)
            )
    delivered_id = claims[ids_by_name["delivered"]].delivery_id
    failed_id = claims[ids_by_name["failed_long_ago"]].delivery_id

    assert await store.prune(cutoff, 1) == 1
    assert await store.prune(cutoff, 1) == 1
    assert await store.prune(cutoff, 1) == 0
    for name in ("delivered", "delivered_2"):
        assert await store.get_event(ids_by_name[name]) is None, name
    for name in ("pending", "failed_recently", "failed_long_ago"):
        assert await store.get_event(ids_by_name[name]) is not None, name
    assert await store.get_event(recent.event_id) is not None
    assert await store.get_delivery(delivered_id) is None
    assert (await store.get_delivery(failed_id))["status"] == "failed"  # type: ignore[index]
    assert (await store.delivery_counts())["failed"] == 2

    # With a (longer) limit for failures: only what failed before it goes.
    assert await store.prune(cutoff, 10, old) == 0  # it failed after that
    assert await store.prune(cutoff, 10, cutoff) == 1
    assert await store.get_event(ids_by_name["failed_long_ago"]) is None
    assert await store.get_event(ids_by_name["failed_recently"]) is not None
    assert (await store.delivery_counts())["failed"] == 1


async def test_a_pruned_tasks_late_updates_stay_superseded(store: Store) -> None:
    """A task's terminal status outlives its pruned events: a late update, or the terminal
    callback sent again, is stored as superseded and never emitted a second time."""
    await store.create_subscriber(subscriber("sub_p"))
    old = time.time() - 40 * 86_400
    done = await store.ingest(incoming("t-done", at=old))
    (claim,) = await claim_all(store, time.time() + 1)
    await store.record_attempt(attempt(claim, "succeeded", at=old + 1))
    assert await store.prune(time.time() - 30 * 86_400, 10) == 1
    assert await store.get_event(done.event_id) is None

    late = await store.ingest(incoming("t-done", "running", progress=50))
    assert (late.outcome, late.deliveries) == ("superseded", 0)
    again = await store.ingest(incoming("t-done"))
    assert (again.outcome, again.deliveries) == ("superseded", 0)
    assert (await store.delivery_counts())["pending"] == 0
    other = await store.ingest(incoming("t-other", "running", progress=50))
    assert other.outcome == "accepted"


async def test_prune_removes_old_canceled_deliveries(store: Store) -> None:
    """Canceled is finished: an old event whose deliveries were canceled leaves on time."""
    await store.create_subscriber(subscriber("sub_c"))
    old = time.time() - 40 * 86_400
    result = await store.ingest(incoming("t-canceled", at=old))
    assert await store.delete_subscriber("sub_c", old + 1) is True
    assert await store.prune(time.time() - 30 * 86_400, 10) == 1
    assert await store.get_event(result.event_id) is None


async def test_prune_removes_expired_callback_urls(store: Store) -> None:
    """Callback URLs that expired before the cutoff lose their metadata; live ones keep it."""
    now = time.time()
    await store.create_callback_url("cbu_old", "evolink", {"a": 1}, now - 100, now - 50)
    await store.create_callback_url("cbu_live", "evolink", {"b": 2}, now, now + 3600)
    await store.prune(now - 10, 10)
    assert await store.get_callback_metadata("cbu_old") is None
    assert await store.get_callback_metadata("cbu_live") == {"b": 2}


# -- archive jobs -------------------------------------------------------------------------------


def archived(event: IncomingEvent, deadline: float = 3600.0) -> IncomingEvent:
    """``event`` as the intake pipeline stores it when its outputs are archived."""
    return dataclasses.replace(event, archive_deadline=event.received_at + deadline)


def archive_outcome(job: ArchiveJob, at: float, **fields: Any) -> ArchiveOutcome:
    assert job.lease_token is not None
    base: dict[str, Any] = {
        "event_id": job.event_id,
        "lease_token": job.lease_token,
        "progress": [],
        "last_error": None,
        "at": at,
        "finished": True,
        "status": "archived",
    }
    return ArchiveOutcome(**{**base, **fields})


async def test_an_archived_event_gets_its_job_and_its_deliveries_wait(store: Store) -> None:
    await store.create_subscriber(subscriber("sub_a"))
    await store.create_subscriber(subscriber("sub_b"))
    event = archived(incoming(at=time.time() - 5))
    result = await store.ingest(event)
    assert (result.outcome, result.deliveries) == ("accepted", 2)
    waiting = await deliveries(store)
    assert [d["status"] for d in waiting] == ["pending", "pending"]
    assert [d["next_attempt_at"] for d in waiting] == [None, None]
    assert await claim_all(store, time.time() + 60) == []  # not due until archived
    job = await store.get_archive_job(event.event_id)
    assert job is not None
    assert (job.status, job.attempts, job.progress, job.provider, job.task_id) == (
        "pending",
        0,
        [],
        "evolink",
        "task-1",
    )
    assert (job.next_attempt_at, job.deadline_at) == (
        event.received_at,
        event.received_at + 3600,
    )
    # A duplicate of the callback makes no second job; a plain event makes none.
    assert (await store.ingest(archived(incoming(at=time.time())))).outcome == "duplicate"
    plain = incoming("task-2")
    await store.ingest(plain)
    assert await store.get_archive_job(plain.event_id) is None
    assert (await store.list_archive_jobs(None, None, 10)).items == [job]


async def test_finishing_an_archive_job_rewrites_the_event_and_releases_its_deliveries(
    store: Store,
) -> None:
    await store.create_subscriber(subscriber("sub_a"))
    event = archived(incoming(at=time.time() - 5))
    await store.ingest(event)
    now = time.time()
    (job,) = await store.claim_archive_jobs(now, 10, LEASE)
    assert job.body == event.body and job.lease_token
    assert await store.claim_archive_jobs(now, 10, LEASE) == []  # leased
    assert await store.extend_archive_lease(job.event_id, job.lease_token, now + 120)
    assert not await store.extend_archive_lease(job.event_id, "not-the-token", now + 120)
    body = json.dumps({"rewritten": True})
    progress = [{"index": 0, "state": "archived", "key": "k", "bytes": 3, "sha256": "x"}]
    outcome = archive_outcome(job, now, body=body, progress=progress)
    # Only the run holding the lease writes its outcome.
    assert not await store.record_archive_outcome(dataclasses.replace(outcome, lease_token="stale"))
    assert await store.record_archive_outcome(outcome)
    assert not await store.record_archive_outcome(outcome)  # once
    assert await store.get_event(event.event_id) == {
        "rewritten": True,
        "relay": {"state": "emitted"},
    }
    done = await store.get_archive_job(event.event_id)
    assert done is not None
    assert (done.status, done.attempts, done.progress, done.next_attempt_at) == (
        "archived",
        1,
        progress,
        None,
    )
    (claim,) = await claim_all(store, now + 1)
    assert claim.event_id == event.event_id and claim.body == body


async def test_an_unfinished_archive_run_is_due_again_and_keeps_the_deliveries_waiting(
    store: Store,
) -> None:
    await store.create_subscriber(subscriber("sub_a"))
    event = archived(incoming(at=time.time() - 5))
    await store.ingest(event)
    now = time.time()
    (job,) = await store.claim_archive_jobs(now, 10, LEASE)
    failed = [{"index": 0, "state": "failed", "reason": "not_found", "error": "HTTP 404"}]
    assert await store.record_archive_outcome(
        archive_outcome(
            job,
            now,
            finished=False,
            progress=failed,
            last_error="HTTP 404",
            next_attempt_at=now + 5,
        )
    )
    assert await store.claim_archive_jobs(now + 4, 10, LEASE) == []
    assert await claim_all(store, now + 60) == []
    (again,) = await store.claim_archive_jobs(now + 5, 10, LEASE)
    assert (again.attempts, again.progress, again.last_error) == (1, failed, "HTTP 404")
    assert again.lease_token != job.lease_token
    assert await store.archive_counts(now + 5) == {
        "pending": 1,
        "failed": 0,
        "oldest_pending_seconds": pytest.approx(now + 5 - event.received_at),
    }


async def test_a_lapsed_archive_lease_is_claimed_again_and_the_old_run_cannot_finish(
    store: Store,
) -> None:
    event = archived(incoming(at=time.time() - 5))
    await store.ingest(event)
    now = time.time()
    (first,) = await store.claim_archive_jobs(now, 10, LEASE)
    (second,) = await store.claim_archive_jobs(now + LEASE, 10, LEASE)
    assert not await store.record_archive_outcome(archive_outcome(first, now + LEASE))
    assert await store.record_archive_outcome(archive_outcome(second, now + LEASE))
    # Leases freed at shutdown: by event, or all.
    other = archived(incoming("task-2", at=now))
    await store.ingest(other)
    (third,) = await store.claim_archive_jobs(now, 10, LEASE)
    assert third.lease_token is not None
    # Another process's lease (a token not ours) stays; ours goes.
    assert await store.release_archive_leases([(third.event_id, "another-run")]) == 0
    assert await store.release_archive_leases([(third.event_id, third.lease_token)]) == 1
    (fourth,) = await store.claim_archive_jobs(now, 10, LEASE)
    assert fourth.event_id == other.event_id
    assert await store.release_archive_leases(None) == 1


async def test_an_operator_retries_only_a_failed_archive_job(store: Store) -> None:
    event = archived(incoming(at=time.time() - 5))
    await store.ingest(event)
    now = time.time()
    assert await store.retry_archive_job("evt_unknown", now, now + 60) is None
    pending = await store.retry_archive_job(event.event_id, now, now + 60)
    assert pending is not None and pending.status == "pending"  # not failed: left alone
    (job,) = await store.claim_archive_jobs(now, 10, LEASE)
    failure = [{"index": 0, "state": "failed", "reason": "too_large", "error": "big"}]
    await store.record_archive_outcome(
        archive_outcome(job, now, status="failed", progress=failure, last_error="big")
    )
    assert (await store.list_archive_jobs("failed", None, 10)).items[0].event_id == event.event_id
    assert (await store.list_archive_jobs("pending", None, 10)).items == []
    assert (await store.archive_counts(now))["failed"] == 1
    retried = await store.retry_archive_job(event.event_id, now + 1, now + 61)
    assert retried is not None
    assert (retried.status, retried.progress, retried.last_error, retried.deadline_at) == (
        "pending",
        failure,
        None,
        now + 61,
    )
    (again,) = await store.claim_archive_jobs(now + 1, 10, LEASE)
    assert again.event_id == event.event_id


async def test_archive_jobs_page_newest_first(store: Store) -> None:
    events = [archived(incoming(f"task-{n}", at=time.time() - 10 + n)) for n in range(5)]
    for event in events:
        await store.ingest(event)
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_archive_jobs(None, cursor, 2)
        seen += [job.event_id for job in page.items]
        if (cursor := page.next_cursor) is None:
            break
    assert seen == [event.event_id for event in reversed(events)]


async def test_retention_keeps_an_event_whose_archive_job_is_pending(store: Store) -> None:
    old = time.time() - 10 * 86_400
    event = archived(incoming(at=old))
    await store.ingest(event)  # no subscriber: nothing else keeps it
    assert await store.prune(old + 1, 100) == 0
    (job,) = await store.claim_archive_jobs(old, 10, LEASE)
    await store.record_archive_outcome(archive_outcome(job, old))
    assert await store.prune(old + 1, 100) == 1
    assert await store.get_archive_job(event.event_id) is None


@pytest.mark.postgres
async def test_concurrent_archive_claims_never_share_a_job(pg_url: str) -> None:
    """Archive workers of two replicas claim at once: each job once."""
    first, second = postgres_store(pg_url), postgres_store(pg_url)
    async with opened(first, second):
        base = time.time() - 100
        for n in range(40):
            await first.ingest(archived(incoming(f"t{n}", at=base + n * 0.01)))
        claimed: list[list[str]] = []

        async def worker(store: PostgresStore) -> None:
            mine: list[str] = []
            while batch := await store.claim_archive_jobs(base + 10, 3, LEASE):
                mine += [job.event_id for job in batch]
            claimed.append(mine)

        await asyncio.gather(*(worker(s) for s in (first, second) for _ in range(4)))
        every = [event_id for mine in claimed for event_id in mine]
        assert len(every) == len(set(every)) == 40
        assert sum(1 for mine in claimed if mine) > 1


async def test_a_redelivery_while_outputs_are_archived_waits_with_the_others(
    store: Store,
) -> None:
    await store.create_subscriber(subscriber("sub_a"))
    await store.create_subscriber(subscriber("sub_b", providers=("rivya",)))
    event = archived(incoming(at=time.time() - 5))
    await store.ingest(event)
    now = time.time()
    assert (await store.redeliver(event.event_id, ["sub_b"], now)).count == 1
    assert await claim_all(store, now + 60) == []
    (job,) = await store.claim_archive_jobs(now, 10, LEASE)
    await store.record_archive_outcome(archive_outcome(job, now + 1))
    claims = await claim_all(store, now + 2)
    assert sorted(c.subscriber_id for c in claims) == ["sub_a", "sub_b"]
    # After the archive, a redelivery is due at once.
    assert (await store.redeliver(event.event_id, ["sub_b"], now + 3)).count == 1
    newest = (await deliveries(store, subscriber_id="sub_b"))[0]
    assert newest["next_attempt_at"] == rfc3339(now + 3)


# -- idempotency keys ---------------------------------------------------------------------------


def key_claim(
    token: str, *, key: str = "key-1", scope: str = "scope-a", request: str = "req-1", at: float
) -> IdempotencyClaim:
    """A claim at ``at``: the key expires a day later, an unanswered claim is stale after 60 s."""
    return IdempotencyClaim(
        scope=scope,
        key=key,
        request_hash=request,
        token=token,
        now=at,
        expires_at=at + 86_400,
        stale_before=at - 60,
    )


async def test_an_idempotency_key_is_claimed_once_and_then_answers(store: Store) -> None:
    now = time.time()
    assert await store.claim_idempotency_key(key_claim("t1", at=now)) is None
    # Held and running: the next claim sees the first request, without an answer yet.
    assert await store.claim_idempotency_key(
        key_claim("t2", request="req-2", at=now + 1)
    ) == EarlierRequest("req-1", None)
    answer = StoredAnswer(201, "application/json", b'{"id":"sub_1"}')
    assert not await store.record_idempotent_answer("scope-a", "key-1", "t2", answer)
    assert await store.record_idempotent_answer("scope-a", "key-1", "t1", answer)
    assert not await store.record_idempotent_answer("scope-a", "key-1", "t1", answer)  # kept
    assert await store.claim_idempotency_key(key_claim("t3", at=now + 2)) == EarlierRequest(
        "req-1", answer
    )
    # Keys are per scope; an empty body and no content type are kept as they are.
    assert await store.claim_idempotency_key(key_claim("t4", scope="scope-b", at=now)) is None
    empty = StoredAnswer(204, None, b"")
    assert await store.record_idempotent_answer("scope-b", "key-1", "t4", empty)
    assert await store.claim_idempotency_key(
        key_claim("t5", scope="scope-b", at=now + 1)
    ) == EarlierRequest("req-1", empty)


async def test_an_idempotency_key_given_back_is_free_again(store: Store) -> None:
    now = time.time()
    assert await store.claim_idempotency_key(key_claim("t1", at=now)) is None
    await store.release_idempotency_key("scope-a", "key-1", "t2")  # not its claim: no effect
    assert await store.claim_idempotency_key(key_claim("t3", at=now)) == EarlierRequest(
        "req-1", None
    )
    await store.release_idempotency_key("scope-a", "key-1", "t1")
    assert await store.claim_idempotency_key(key_claim("t4", request="req-2", at=now)) is None
    answer = StoredAnswer(200, "application/json", b"{}")
    assert await store.record_idempotent_answer("scope-a", "key-1", "t4", answer)
    await store.release_idempotency_key("scope-a", "key-1", "t4")  # answered: kept
    assert await store.claim_idempotency_key(key_claim("t5", at=now)) == EarlierRequest(
        "req-2", answer
    )


async def test_an_expired_or_abandoned_idempotency_key_is_taken_over(store: Store) -> None:
    now = time.time()
    answer = StoredAnswer(201, "application/json", b"{}")
    # Answered, then a day goes by: the key serves a new request.
    assert await store.claim_idempotency_key(key_claim("t1", at=now)) is None
    assert await store.record_idempotent_answer("scope-a", "key-1", "t1", answer)
    assert await store.claim_idempotency_key(key_claim("t2", at=now + 86_399)) is not None
    assert await store.claim_idempotency_key(key_claim("t3", request="r3", at=now + 86_400)) is None
    # Claimed and never answered: held for a minute, then taken over; the abandoned claim can
    # no longer record its answer.
    assert await store.claim_idempotency_key(key_claim("t4", key="k2", at=now)) is None
    assert await store.claim_idempotency_key(key_claim("t5", key="k2", at=now + 59)) is not None
    assert await store.claim_idempotency_key(key_claim("t6", key="k2", at=now + 61)) is None
    assert not await store.record_idempotent_answer("scope-a", "k2", "t4", answer)
    assert await store.record_idempotent_answer("scope-a", "k2", "t6", answer)


async def test_prune_removes_expired_idempotency_keys(store: Store) -> None:
    now = time.time()
    for n, at in enumerate([now - 86_400 * 2, now - 86_400, now]):
        assert await store.claim_idempotency_key(key_claim(f"t{n}", key=f"k{n}", at=at)) is None
    assert await store.prune_idempotency_keys(now, 1) == 1
    assert await store.prune_idempotency_keys(now, 10) == 1  # expires_at == now: gone too
    assert await store.prune_idempotency_keys(now, 10) == 0
    assert await store.claim_idempotency_key(key_claim("t9", key="k2", at=now)) is not None
    assert await store.claim_idempotency_key(key_claim("t9", key="k0", at=now)) is None


@pytest.mark.postgres
async def test_concurrent_claims_of_one_idempotency_key_get_it_once(pg_url: str) -> None:
    """Replicas receiving the same key at once: exactly one runs the request."""
    stores = [postgres_store(pg_url) for _ in range(3)]
    async with opened(*stores):
        for n in range(20):
            now = time.time()
            claims = [
                stores[i % 3].claim_idempotency_key(key_claim(f"t{i}", key=f"k{n}", at=now))
                for i in range(6)
            ]
            results = await asyncio.gather(*claims)
            assert results.count(None) == 1, results
            assert all(r == EarlierRequest("req-1", None) for r in results if r is not None)


async def test_overdue_archive_jobs_are_claimed_apart(store: Store) -> None:
    now = time.time()
    soon = archived(incoming("task-soon", at=now - 100), deadline=50)  # deadline: now - 50
    later = archived(incoming("task-later", at=now - 100), deadline=1000)
    await store.ingest(soon)
    await store.ingest(later)
    (overdue,) = await store.claim_archive_jobs(now, 10, LEASE, overdue_at=now - 40)
    assert overdue.event_id == soon.event_id
    assert await store.claim_archive_jobs(now, 10, LEASE, overdue_at=now - 40) == []
    (other,) = await store.claim_archive_jobs(now, 10, LEASE)
    assert other.event_id == later.event_id


# -- scoped API keys ----------------------------------------------------------------------------


def api_key(key_id: str, scope: str = "read", *, at: float = 1000.0) -> ApiKey:
    return ApiKey(
        id=key_id,
        name=f"name of {key_id}",
        scope=scope,
        key_hash=f"hash-of-{key_id}",
        created_at=at,
    )


async def test_api_keys_are_found_by_hash_and_listed_oldest_first(store: Store) -> None:
    await store.create_api_key(api_key("key_b", "operate", at=1000.0))
    await store.create_api_key(api_key("key_a", "admin", at=1001.0))
    found = await store.api_key_by_hash("hash-of-key_b")
    assert found == api_key("key_b", "operate", at=1000.0)
    assert await store.api_key_by_hash("hash-of-nothing") is None
    assert [k.id for k in await store.list_api_keys()] == ["key_b", "key_a"]


async def test_a_revoked_api_key_keeps_its_first_revocation(store: Store) -> None:
    await store.create_api_key(api_key("key_r"))
    revoked = await store.revoke_api_key("key_r", 2000.0)
    assert revoked is not None and revoked.revoked_at == 2000.0
    again = await store.revoke_api_key("key_r", 3000.0)
    assert again is not None and again.revoked_at == 2000.0
    found = await store.api_key_by_hash("hash-of-key_r")
    assert found is not None and found.revoked_at == 2000.0  # still found: the caller refuses it
    assert await store.revoke_api_key("key_unknown", 2000.0) is None


async def test_api_key_use_is_written_at_most_once_per_interval(store: Store) -> None:
    await store.create_api_key(api_key("key_t"))

    async def last_used() -> float | None:
        found = await store.api_key_by_hash("hash-of-key_t")
        assert found is not None
        return found.last_used_at

    await store.touch_api_key("key_t", 5000.0, 60.0)
    assert await last_used() == 5000.0
    await store.touch_api_key("key_t", 5059.0, 60.0)  # within the minute: not written
    assert await last_used() == 5000.0
    await store.touch_api_key("key_t", 5060.0, 60.0)
    assert await last_used() == 5060.0
    await store.touch_api_key("key_unknown", 5060.0, 60.0)  # no such key: nothing happens


async def test_console_sessions_keep_their_scope_and_end_with_their_key(store: Store) -> None:
    now = time.time()
    await store.create_api_key(api_key("key_s", "operate"))
    await store.create_ops_session("ses_key", now, now + 3600, scope="operate", key_id="key_s")
    await store.create_ops_session("ses_token", now, now + 3600)  # the admin token's
    assert await store.ops_session_live("ses_key", now + 1) == "operate"
    assert await store.ops_session_live("ses_token", now + 1) == "admin"
    await store.revoke_api_key("key_s", now + 2)
    assert await store.ops_session_live("ses_key", now + 3) is None
    assert await store.ops_session_live("ses_token", now + 3) == "admin"
