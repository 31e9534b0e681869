"""Finding events, deliveries and watches by their metadata, and routing events to subscribers
by it: in each store (SQLite and PostgreSQL), through the index ``event_metadata``, and through
a real relay's API.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from service import cli
from service.store import metadata_index
from service.store.base import DeliveryFilter, EventFilter, IncomingEvent, Store
from service.store.filters import delivery_details_query, events_query
from service.store.paging import paged_query
from service.store.watch_model import WatchFilter
from tests.conftest import EVOLINK_COMPLETED, RelayServer
from tests.provider_emulators import Fault, ProviderEmulator
from tests.subscriber_server import SubscriberServer
from tests.test_confirmation_rivya_simulate import forged
from tests.test_ops_console import browser, csrf_of, sign_in
from tests.test_store_contract import (  # noqa: F401 (fixtures)
    anyio_backend,
    incoming,
    make_store,
    pg_url,
    postgres_store,
    store,
    store_kind,
    subscriber,
)
from tests.test_store_watches import watch as store_watch

U42 = (("user_id", "u-42"),)


def tagged(task: str, status: str = "running", **metadata: Any) -> IncomingEvent:
    """An event whose callback URL carried ``metadata`` (indexed as the relay does)."""
    event = incoming(task, status, progress=10 if status == "running" else None)
    return dataclasses.replace(event, metadata=metadata_index.indexed(metadata))


def ids_of(page_items: list[str]) -> list[str]:
    return [json.loads(item)["id"] for item in page_items]


# -- what is indexed ----------------------------------------------------------------------------


def test_indexed_entries_are_top_level_scalars_as_text() -> None:
    metadata = {
        "user_id": "u-42",
        "n": 42,
        "vip": True,
        "ratio": 1.5,
        "nested": {"a": 1},
        "list": [1],
        "none": None,
        "long": "x" * 257,
        "bad key": "v",
    }
    assert metadata_index.indexed(metadata) == {"user_id": "u-42", "n": "42", "vip": "true"}
    many = {f"k{i}": "v" for i in range(100)}
    assert len(metadata_index.indexed(many)) == metadata_index.MAX_INDEXED


# -- the stores ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_events_are_found_by_metadata_newest_first_across_pages(store: Store) -> None:  # noqa: F811
    """Several keys combine; other filters apply too; pages follow the index's order; a
    superseded event is found as well (it is stored); an event without metadata never is."""
    mine = []
    for n in range(5):
        event = tagged(f"job-{n}", user_id="u-42", tenant="acme")
        await store.ingest(event)
        mine.append(event.event_id)
    other = tagged("other", user_id="u-7", tenant="acme")
    await store.ingest(other)
    await store.ingest(incoming("bare", "running", progress=1))
    done = tagged("job-0", "succeeded", user_id="u-42", tenant="acme")
    await store.ingest(done)
    late = tagged("job-0", "running", user_id="u-42", tenant="acme")
    late = dataclasses.replace(late, dedup_key="late-after-terminal")
    assert (await store.ingest(late)).outcome == "superseded"
    expected = [late.event_id, done.event_id, *mine[::-1]]

    page = await store.list_events(EventFilter(metadata=U42), None, 3)
    rest = await store.list_events(EventFilter(metadata=U42), page.next_cursor, 10)
    assert ids_of(page.items) + ids_of(rest.items) == expected and rest.next_cursor is None
    states = [json.loads(item)["relay"]["state"] for item in page.items]
    assert states == ["superseded", "emitted", "emitted"]  # marked, as get_event marks them
    plain = await store.list_events(EventFilter(task_id="job-0"), None, 10)
    assert [json.loads(item)["relay"]["state"] for item in plain.items] == [
        "superseded",
        "emitted",
        "emitted",
    ]

    both = EventFilter(metadata=(("tenant", "acme"), ("user_id", "u-7")))
    assert ids_of((await store.list_events(both, None, 50)).items) == [other.event_id]
    succeeded = EventFilter(status="succeeded", metadata=U42)
    assert ids_of((await store.list_events(succeeded, None, 50)).items) == [done.event_id]
    nobody = EventFilter(metadata=(("user_id", "u-43"),))
    assert (await store.list_events(nobody, None, 50)).items == []


@pytest.mark.anyio
async def test_deliveries_are_found_by_their_events_metadata(store: Store) -> None:  # noqa: F811
    sub = subscriber()
    await store.create_subscriber(sub)
    mine = tagged("job-1", user_id="u-42")
    await store.ingest(mine)
    await store.ingest(tagged("job-2", user_id="u-7"))
    await store.ingest(incoming("bare", "running", progress=1))
    found = await store.list_deliveries(DeliveryFilter(metadata=U42), None, 50)
    assert [d["event_id"] for d in found.items] == [mine.event_id]
    pending = DeliveryFilter(status="pending", subscriber_id=sub.id, metadata=U42)
    assert [d["event_id"] for d in (await store.list_deliveries(pending, None, 50)).items] == [
        mine.event_id
    ]
    details = await store.delivery_details(DeliveryFilter(metadata=U42), "evolink", 50)
    assert [d["event_id"] for d in details] == [mine.event_id]
    assert await store.delivery_details(DeliveryFilter(metadata=U42), "apiframe", 50) == []
    failed = DeliveryFilter(status="failed", metadata=U42)
    assert (await store.list_deliveries(failed, None, 50)).items == []


@pytest.mark.anyio
async def test_subscribers_get_only_the_events_their_metadata_filter_matches(
    store: Store,  # noqa: F811
) -> None:
    """Exact values, every key; a changed filter applies to events stored afterwards."""
    acme = dataclasses.replace(subscriber(), metadata=(("region", "eu"), ("tenant", "acme")))
    everyone = subscriber()
    for sub in (acme, everyone):
        await store.create_subscriber(sub)
    hit = await store.ingest(tagged("a", tenant="acme", region="eu", user_id="u-1"))
    assert hit.deliveries == 2
    assert (await store.ingest(tagged("b", tenant="acme", region="us"))).deliveries == 1
    assert (await store.ingest(tagged("c", tenant="Acme", region="eu"))).deliveries == 1
    assert (await store.ingest(incoming("d", "running", progress=1))).deliveries == 1
    await store.update_subscriber(acme.id, {"metadata": (("tenant", "globex"),)})
    changed = await store.get_subscriber(acme.id)
    assert changed is not None and changed.metadata == (("tenant", "globex"),)
    assert (await store.ingest(tagged("e", tenant="acme", region="eu"))).deliveries == 1
    assert (await store.ingest(tagged("f", tenant="globex"))).deliveries == 2
    kept = await store.list_deliveries(DeliveryFilter(subscriber_id=acme.id), None, 50)
    assert [d["event_id"] for d in kept.items][-1] == hit.event_id  # earlier ones stay
    await store.update_subscriber(acme.id, {"metadata": None})
    assert (await store.ingest(incoming("g", "running", progress=1))).deliveries == 2


@pytest.mark.anyio
async def test_retention_deletes_an_events_index_entries(
    store: Store,  # noqa: F811
    store_kind: str,  # noqa: F811
    tmp_path: Any,
) -> None:
    old = dataclasses.replace(tagged("old", user_id="u-42"), received_at=time.time() - 3600)
    await store.ingest(old)
    await store.ingest(tagged("new", user_id="u-42"))
    assert await store.prune(time.time() - 60, 100) == 1
    assert len((await store.list_events(EventFilter(metadata=U42), None, 50)).items) == 1
    await store.close()
    if store_kind == "sqlite":
        with sqlite3.connect(tmp_path / "relay.db") as conn:
            (rows,) = conn.execute("SELECT count(*) FROM event_metadata").fetchone()
    else:
        with psycopg.connect(store.url) as pg:  # type: ignore[attr-defined]
            (rows,) = pg.execute("SELECT count(*) FROM event_metadata").fetchone()  # type: ignore[misc]
    assert rows == 1
    await store.open()


# -- the plans: an index lookup, never a scan ---------------------------------------------------


def _sqlite_plan(conn: sqlite3.Connection, sql: str, params: list[Any]) -> list[str]:
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def test_sqlite_plans_walk_the_index(tmp_path: Any) -> None:
    """Events and deliveries by metadata (with other filters beside) start from the index's
    (key, value) range and reach rows by primary key; nothing is scanned."""
    from service.store.sqlite_schema import connect

    conn = connect(str(tmp_path / "plan.db"), "NORMAL", migrate=True)
    two = (("tenant", "acme"), ("user_id", "u-42"))
    sql, params = paged_query(
        *_events(EventFilter(provider="evolink", status="failed", metadata=two), "?", "CROSS JOIN"),
        None,
        50,
        "?",
        position="m0.event_seq",
    )
    plan = _sqlite_plan(conn, sql, params)
    assert plan[0] == "SEARCH m0 USING PRIMARY KEY (key=? AND value=?)", plan
    # The second pair: looked up by event (the primary key, or the covering index by event).
    [second] = [step for step in plan if step.startswith("SEARCH m1 ")]
    assert "event_seq=?" in second and "key=?" in second and "value=?" in second, plan
    assert "SEARCH e USING INTEGER PRIMARY KEY (rowid=?)" in plan
    assert not [step for step in plan if step.startswith("SCAN") or "TEMP B-TREE" in step]

    sql, params = delivery_details_query(
        DeliveryFilter(status="failed", metadata=U42),
        "?",
        provider="evolink",
        limit=50,
        now=0.0,
        join="CROSS JOIN",
    )
    plan = _sqlite_plan(conn, sql, params)
    assert plan[0] == "SEARCH m0 USING PRIMARY KEY (key=? AND value=?)", plan
    assert "SEARCH d USING INDEX deliveries_event (event_id=?)" in plan
    assert not [step for step in plan if step.startswith("SCAN")]
    conn.close()


def _events(filters: EventFilter, mark: str, join: str) -> tuple[str, tuple[list[str], list[Any]]]:
    select, clauses, params = events_query(filters, mark, join)
    return select, (clauses, params)


@pytest.mark.postgres
def test_postgres_plan_walks_the_index(pg_url: str) -> None:  # noqa: F811
    """With 20,000 events (statistics gathered), PostgreSQL reads the index range of the
    filter's first pair backwards and reaches events by primary key."""
    import asyncio

    async def migrate() -> None:
        opened = postgres_store(pg_url)
        await opened.open()
        await opened.close()

    asyncio.run(migrate())
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (id, provider, task_id, status, dedup_key, state, received_at,"
            " body, raw_body) SELECT 'evt_' || n, 'evolink', 't' || n, 'running', 'k' || n,"
            " 'emitted', n, '{}', '' FROM generate_series(1, 20000) AS n"
        )
        conn.execute(
            "INSERT INTO event_metadata (key, value, event_seq)"
            " SELECT 'user_id', 'u-' || (seq % 2000), seq FROM events"
        )
        conn.execute("ANALYZE events")
        conn.execute("ANALYZE event_metadata")
        sql, params = paged_query(
            *_events(EventFilter(provider="evolink", metadata=U42), "%s", "JOIN"),
            None,
            50,
            "%s",
            position="m0.event_seq",
        )
        plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN {sql}", params))  # type: ignore[arg-type]
    assert "Index" in plan and "event_metadata_pkey" in plan, plan
    assert "Seq Scan" not in plan, plan


# -- the API ------------------------------------------------------------------------------------


def _completed(task: str) -> dict[str, Any]:
    return {**EVOLINK_COMPLETED, "id": task}


def _refused(relay: RelayServer, path: str, code: str = "invalid_query") -> str:
    response = relay.client.get(path, headers=relay.admin)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
    message: str = response.json()["error"]["message"]
    assert message
    return message


def test_api_lists_by_metadata_and_refuses_what_it_cannot_read(
    relay_server: RelayServer,
) -> None:
    relay = relay_server
    relay.add_subscriber("http://127.0.0.1:9/never")  # deliveries exist (they fail later)
    mine = relay.mint(metadata={"user_id": "u-42", "tenant": "acme", "n": 7})
    other = relay.mint(metadata={"user_id": "u-7", "tenant": "acme"})
    assert relay.post_callback(mine, _completed("job-mine")).status_code == 200
    assert relay.post_callback(other, _completed("job-other")).status_code == 200
    [found] = relay.events(**{"metadata.user_id": "u-42"})
    assert found["subject"] == "job-mine"
    assert [e["subject"] for e in relay.events(**{"metadata.tenant": "acme"})] == [
        "job-other",
        "job-mine",
    ]
    assert relay.events(**{"metadata.tenant": "acme", "metadata.user_id": "u-7"})[0]["subject"] == (
        "job-other"
    )
    assert relay.events(**{"metadata.n": "7"})[0]["subject"] == "job-mine"
    assert relay.events(**{"metadata.tenant": "globex"}) == []
    [delivery] = relay.deliveries(**{"metadata.user_id": "u-42"})
    assert delivery["event_id"] == found["id"]

    assert "colour" in _refused(relay, "/v1/events?colour=red")
    assert "status" in _refused(relay, "/v1/events?status=bogus")
    _refused(relay, "/v1/deliveries?status=bogus")
    _refused(relay, "/v1/deliveries?colour=red")
    _refused(relay, "/v1/events?metadata=user_id")
    _refused(relay, "/v1/events?metadata.=x")
    _refused(relay, "/v1/events?metadata.bad%20key=x")
    _refused(relay, "/v1/events?metadata.user_id=" + "x" * 257)
    _refused(relay, "/v1/events?" + "&".join(f"metadata.k{i}=v" for i in range(9)))
    _refused(relay, "/v1/events?metadata.user_id=a&metadata.user_id=b")
    _refused(relay, "/v1/subscribers?metadata.user_id=u-42")  # not a list that has it
    _refused(relay, "/v1/watches?metadata.user_id=" + "x" * 257)


def test_watches_are_found_by_their_metadata_or_their_urls(
    emulator: ProviderEmulator, relay_factory: Callable[..., RelayServer]
) -> None:
    relay = relay_factory(**emulator.relay_settings())
    body = {"provider": "reve-art", "poll_after_seconds": 3600}
    for task, metadata in [
        ("img-1", {"user_id": "u-42", "vip": True}),
        ("img-2", {"user_id": "u-7"}),
        ("img-3", {"user_id": 42}),
    ]:
        created = relay.client.post(
            "/v1/watches", json={**body, "task_id": task, "metadata": metadata}, headers=relay.admin
        )
        assert created.status_code == 201, created.text

    def found(**params: str) -> list[str]:
        response = relay.client.get("/v1/watches", params=params, headers=relay.admin)
        assert response.status_code == 200, response.text
        return [w["task_id"] for w in response.json()["items"]]

    assert found(**{"metadata.user_id": "u-42"}) == ["img-1"]
    assert found(**{"metadata.user_id": "u-42", "metadata.vip": "true"}) == ["img-1"]
    assert found(**{"metadata.vip": "false"}) == []
    assert found(**{"metadata.user_id": "42"}) == ["img-3"]
    assert found(**{"metadata.user_id": "u-8"}) == []


def test_each_customer_gets_its_own_events(
    relay_server: RelayServer, sink: SubscriberServer
) -> None:
    """A platform routes by tenant: each subscriber receives only its tenant's results; a
    changed filter applies to callbacks received afterwards."""
    relay = relay_server
    other_sink = SubscriberServer().start()
    try:
        acme = relay.add_subscriber(sink.url, metadata={"tenant": "acme"})
        assert acme["metadata"] == {"tenant": "acme"}
        relay.add_subscriber(other_sink.url, metadata={"tenant": "globex"})
        acme_url = relay.mint(metadata={"tenant": "acme", "user_id": "u-1"})
        globex_url = relay.mint(metadata={"tenant": "globex"})
        relay.post_callback(acme_url, _completed("acme-1"))
        relay.post_callback(globex_url, _completed("globex-1"))
        relay.post_callback(relay.mint(), _completed("nobody-1"))
        [got] = sink.wait_for(1)
        [other_got] = other_sink.wait_for(1)
        relay.wait_settled()
        assert got.data["task_id"] == "acme-1" and other_got.data["task_id"] == "globex-1"
        assert len(sink.receipts) == 1 and len(other_sink.receipts) == 1

        changed = relay.client.patch(
            f"/v1/subscribers/{acme['id']}",
            json={"metadata": {"tenant": "globex"}},
            headers=relay.admin,
        )
        assert changed.status_code == 200 and changed.json()["metadata"] == {"tenant": "globex"}
        # (a callback URL serves one task: new ones, with the same metadata)
        relay.post_callback(relay.mint(metadata={"tenant": "acme"}), _completed("acme-2"))
        relay.post_callback(relay.mint(metadata={"tenant": "globex"}), _completed("globex-2"))
        sink.wait_for(2)
        other_sink.wait_for(2)
        relay.wait_settled()
        assert [r.data["task_id"] for r in sink.receipts] == ["acme-1", "globex-2"]
        assert [r.data["task_id"] for r in other_sink.receipts] == ["globex-1", "globex-2"]
    finally:
        other_sink.stop()

    for bad in [
        {"tenant": {"nested": 1}},
        {"tenant": None},
        {"bad key": "x"},
        {"tenant": "x" * 257},
        {f"k{i}": "v" for i in range(9)},
        ["tenant"],
    ]:
        refused = relay.client.post(
            "/v1/subscribers", json={"url": sink.url, "metadata": bad}, headers=relay.admin
        )
        assert refused.status_code == 400, (bad, refused.text)
        assert refused.json()["error"]["code"] == "invalid_subscriber"


@pytest.mark.postgres
def test_api_lists_by_metadata_on_postgres(
    relay_factory: Callable[..., RelayServer],
    pg_url: str,  # noqa: F811
) -> None:
    """As on SQLite; and metadata the index cannot hold (a NUL, which PostgreSQL's text cannot
    store; over 256 characters; nested; a thousand keys) never stops a callback from being
    accepted."""
    relay = relay_factory(database_url=pg_url)
    relay.add_subscriber("http://127.0.0.1:9/never")
    mine = relay.mint(metadata={"user_id": "u-42"})
    assert relay.post_callback(mine, _completed("job-mine")).status_code == 200
    assert relay.post_callback(relay.mint(), _completed("job-bare")).status_code == 200
    hostile = {
        "user_id": "u-\x00-42",
        "big": "x" * 1000,
        "deep": {"a": [1, {"b": 2}]},
        **{f"k{i}": i for i in range(1000)},
    }
    url = relay.mint(metadata=hostile)
    assert relay.post_callback(url, _completed("job-hostile")).status_code == 200
    assert [e["subject"] for e in relay.events(**{"metadata.k3": "3"})] == ["job-hostile"]
    assert relay.events(**{"metadata.k999": "999"}) == []  # past the 32 entries indexed
    refused = relay.client.post(
        "/v1/subscribers",
        json={"url": "http://127.0.0.1:9/x", "metadata": {"user_id": "a\x00b"}},
        headers=relay.admin,
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_subscriber"
    assert [e["subject"] for e in relay.events(**{"metadata.user_id": "u-42"})] == ["job-mine"]
    assert len(relay.deliveries(**{"metadata.user_id": "u-42"})) == 1
    assert (
        httpx.get(f"{relay.base_url}/v1/events?colour=red", headers=relay.admin).status_code == 400
    )


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_lists_by_metadata_and_registers_a_metadata_filter(
    relay_server: RelayServer,
    sink: SubscriberServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    relay = relay_server
    relay.add_subscriber(sink.url)
    relay.post_callback(relay.mint(metadata={"user_id": "u-42"}), _completed("job-mine"))
    relay.post_callback(relay.mint(metadata={"user_id": "u-7"}), _completed("job-other"))
    relay.wait_settled()
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(cli, "configure_logging", lambda *_args: None)
    database = ["--database-url", relay.settings.database_url]

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main([*database, *args])
        captured = capsys.readouterr()
        # (the relay's own log lines, in this process, are captured with the output)
        out = "".join(line for line in captured.out.splitlines(True) if not LOG_LINE.match(line))
        return code, out, captured.err

    code, out, _ = run("events", "list", "--meta", "user_id=u-42")
    assert code == 0 and "job-mine" in out and "job-other" not in out, out
    assert "emitted" in out and out.rstrip().endswith("1 events")
    code, out, _ = run("deliveries", "list", "--status", "succeeded", "--meta", "user_id=u-7")
    assert code == 0 and out.rstrip().endswith("1 succeeded deliveries"), out
    code, out, _ = run("events", "list", "--meta", "user_id=u-42", "--meta", "tenant=acme")
    assert code == 0 and out.rstrip().endswith("0 events"), out
    code, _, err = run("events", "list", "--meta", "bad key=x")
    assert code == 2 and "invalid_meta" in err, err

    monkeypatch.setenv("RELAY_ALLOW_PRIVATE_TARGETS", "true")
    code, _, err = run("subscribers", "add", "http://127.0.0.1:9/acme", "--meta", "tenant=acme")
    assert code == 0, err
    listed = relay.client.get("/v1/subscribers", headers=relay.admin).json()["items"]
    assert [s["metadata"] for s in listed] == [None, {"tenant": "acme"}]


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT")


def test_sqlite_walks_the_rarest_pair_of_a_filter(tmp_path: Any) -> None:
    """SQLite keeps no statistics: the list walks the pair with the fewest entries (a user of
    one event rather than a tenant of five), whichever order the filter names them in."""
    from service.store.sqlite_events import rarest_first
    from service.store.sqlite_schema import connect

    conn = connect(str(tmp_path / "rare.db"), "NORMAL", migrate=True)
    conn.executemany(
        "INSERT INTO event_metadata (key, value, event_seq) VALUES (?, ?, ?)",
        [("tenant", "acme", n) for n in range(5)] + [("user_id", "u-1", 3)],
    )
    broad_first = (("tenant", "acme"), ("user_id", "u-1"))
    assert rarest_first(conn, broad_first) == (("user_id", "u-1"), ("tenant", "acme"))
    assert rarest_first(conn, broad_first[:1]) == broad_first[:1]
    conn.close()


# -- the console --------------------------------------------------------------------------------


def test_console_searches_by_metadata_marks_superseded_and_refuses_bad_queries(
    relay_server: RelayServer,
) -> None:
    relay = relay_server
    relay.add_subscriber("http://127.0.0.1:9/never")
    mine = relay.mint(metadata={"user_id": "u-42", "tenant": "acme"})
    relay.post_callback(mine, _completed("job-mine"))
    late = relay.post_callback(mine, {**_completed("job-mine"), "status": "processing"})
    assert late.json()["superseded"] is True, late.text
    relay.post_callback(relay.mint(metadata={"user_id": "u-7"}), _completed("job-other"))
    with browser(relay) as client:
        sign_in(client)
        page = client.get("/ops/events", params={"meta": "user_id=u-42, tenant=acme"})
        assert page.status_code == 200, page.text
        assert "job-mine" in page.text and "job-other" not in page.text
        assert page.text.count('class="badge superseded"') == 1
        assert 'value="user_id=u-42, tenant=acme"' in page.text  # the search box keeps it
        failed = client.get("/ops/deliveries", params={"status": "any", "meta": "user_id=u-7"})
        assert failed.status_code == 200 and "job-other" in failed.text
        assert "job-mine" not in failed.text

        for path, said in [
            ("/ops/events?colour=red", "Unknown parameter &#39;colour&#39;"),
            ("/ops/deliveries?colour=red", "Unknown parameter &#39;colour&#39;"),
            ("/ops/deliveries?status=bogus", "Unknown status &#39;bogus&#39;"),
            ("/ops/events?status=bogus", "Unknown status &#39;bogus&#39;"),
            ("/ops/events?meta=user_id", "write key=value"),
            ("/ops/events?meta=bad%20key%3Dx", "Metadata filter"),
            ("/ops/deliveries?meta=a%3D1,a%3D2", "given twice"),
            ("/ops/events?provider=evolink&provider=apiframe", "more than once"),
        ]:
            refused = client.get(path)
            assert refused.status_code == 400, path
            assert said in refused.text, (path, refused.text[-2000:])


def test_console_events_list_marks_held_callbacks(
    emulator: ProviderEmulator, relay_factory: Callable[..., RelayServer]
) -> None:
    """A terminal callback awaiting the provider API's confirmation is no event yet: the
    events list shows it, marked held, found by its URL's metadata too."""
    relay = relay_factory(**emulator.relay_settings(provider_timeout=0.5, hold_deadline=30.0))
    waiting = emulator.add_task("evolink", always=Fault(503))
    url = relay.mint(metadata={"user_id": "u-42"})
    answer = relay.post_callback(url, forged(waiting))
    assert answer.json()["held"] is True, answer.text
    with browser(relay) as client:
        sign_in(client)
        page = client.get("/ops/events", params={"meta": "user_id=u-42"})
        assert page.status_code == 200
        assert answer.json()["watch_id"] in page.text and 'class="badge held"' in page.text
        other = client.get("/ops/events", params={"meta": "user_id=u-7"})
        assert answer.json()["watch_id"] not in other.text


@pytest.mark.anyio
async def test_watches_are_found_by_their_metadata_over_their_urls(
    store: Store,  # noqa: F811
) -> None:
    """The watch's own entry wins over its callback URL's; values compare as text."""
    now = time.time()
    await store.create_callback_url("url_1", "evolink", {"user_id": "u-42", "n": 7}, now, now + 60)
    await store.create_watch(store_watch("own", metadata={"user_id": "u-42", "vip": True}))
    await store.create_watch(store_watch("by-url", metadata={}, url_id="url_1"))
    await store.create_watch(store_watch("overridden", metadata={"user_id": "u-8"}, url_id="url_1"))
    await store.create_watch(store_watch("nested", metadata={"user_id": {"id": "u-42"}}))

    async def found(*pairs: tuple[str, str]) -> list[str]:
        page = await store.list_watches(WatchFilter(metadata=pairs), None, 50)
        return [w.task_id for w in page.items]

    assert await found(("user_id", "u-42")) == ["by-url", "own"]
    assert await found(("user_id", "u-8")) == ["overridden"]
    assert await found(("n", "7")) == ["overridden", "by-url"]
    assert await found(("vip", "true"), ("user_id", "u-42")) == ["own"]
    assert await found(("vip", "1")) == []


def test_console_sets_a_subscribers_metadata_filter(relay_server: RelayServer) -> None:
    relay = relay_server
    with browser(relay) as client:
        sign_in(client)
        csrf = csrf_of(client.get("/ops/subscribers").text)
        added = client.post(
            "/ops/subscribers",
            data={"csrf": csrf, "url": "http://127.0.0.1:9/acme", "metadata": "tenant=acme"},
        )
        assert added.status_code == 200 and "whsec_" in added.text
        [sub] = relay.client.get("/v1/subscribers", headers=relay.admin).json()["items"]
        assert sub["metadata"] == {"tenant": "acme"}
        assert "tenant=acme" in client.get("/ops/subscribers").text
        client.post(
            f"/ops/subscribers/{sub['id']}",
            data={"csrf": csrf, "action": "filters", "metadata": "tenant=globex, region=eu"},
        )
        shown = relay.client.get(f"/v1/subscribers/{sub['id']}", headers=relay.admin).json()
        assert shown["metadata"] == {"region": "eu", "tenant": "globex"}
        refused = client.post(
            f"/ops/subscribers/{sub['id']}",
            data={"csrf": csrf, "action": "filters", "metadata": "bad key=x", "back": "/ops"},
        )
        assert refused.status_code == 303
        assert "notice error" in client.get(refused.headers["location"]).text
        client.post(f"/ops/subscribers/{sub['id']}", data={"csrf": csrf, "action": "filters"})
        shown = relay.client.get(f"/v1/subscribers/{sub['id']}", headers=relay.admin).json()
        assert shown["metadata"] is None
