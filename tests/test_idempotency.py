"""``Idempotency-Key`` on the admin API (``service.idempotency``), through real relays: a retry
with the same key gets the first answer and creates nothing twice, on SQLite and PostgreSQL,
from threads racing on one relay and on two replicas sharing one database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from starlette.datastructures import Secret

from service.openapi import document
from service.store.postgres_subscribers import LOCK_SUBSCRIBERS
from tests.conftest import EVOLINK_COMPLETED, RelayServer
from tests.subscriber_server import SubscriberServer
from tests.test_store_contract import fresh_schema

HOOK = {"url": "http://127.0.0.1:9/hook", "description": "never called"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def relay(request: pytest.FixtureRequest, relay_factory: Callable[..., RelayServer]) -> Any:
    if request.param == "sqlite":
        yield relay_factory()
        return
    with fresh_schema() as url:
        server = relay_factory(database_url=url)
        yield server
        server.stop()  # before the schema is dropped


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


def post(
    relay: RelayServer,
    path: str,
    key: str | bytes | None,
    body: dict[str, Any] | None = None,
    *,
    content: bytes | None = None,
    token: str | None = None,
) -> httpx.Response:
    headers: dict[str, Any] = dict(relay.admin)
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    if key is not None:
        headers["idempotency-key"] = key
    if content is not None:
        return relay.client.post(path, content=content, headers=headers)
    return relay.client.post(path, json=body, headers=headers)


def subscribers(relay: RelayServer, token: str | None = None) -> list[dict[str, Any]]:
    headers = relay.admin if token is None else {"authorization": f"Bearer {token}"}
    answer = relay.client.get("/v1/subscribers", params={"limit": 100}, headers=headers)
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def error_code(answer: httpx.Response) -> str:
    code: str = answer.json()["error"]["code"]
    return code


def test_a_retry_with_the_same_key_gets_the_first_answer(relay: RelayServer) -> None:
    first = post(relay, "/v1/subscribers", "retry-1", HOOK)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = post(relay, "/v1/subscribers", "retry-1", HOOK)
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"] == "application/json"
    assert again.content == first.content  # the secret shown once, shown again to the retry
    assert [s["id"] for s in subscribers(relay)] == [first.json()["id"]]
    # Another key is another request.
    assert post(relay, "/v1/subscribers", "retry-2", HOOK).status_code == 201
    assert len(subscribers(relay)) == 2


def test_a_key_reused_for_another_request_is_refused(relay: RelayServer) -> None:
    assert post(relay, "/v1/subscribers", "reused", HOOK).status_code == 201
    other_body = post(relay, "/v1/subscribers", "reused", {**HOOK, "description": "other"})
    # The body is compared as sent: the same JSON spaced differently is another body.
    respaced = post(
        relay, "/v1/subscribers", "reused", content=b'{"url": "http://127.0.0.1:9/hook"}'
    )
    other_path = post(relay, "/v1/callback-urls", "reused", {"provider": "evolink"})
    for answer in (other_body, respaced, other_path):
        assert answer.status_code == 409, answer.text
        assert error_code(answer) == "idempotency_key_reused"
    assert len(subscribers(relay)) == 1


def test_concurrent_requests_with_one_key_create_one_subscriber(relay: RelayServer) -> None:
    answers = race(8, lambda _n: post(relay, "/v1/subscribers", "race", HOOK))
    assert_one_ran(answers)
    assert len(subscribers(relay)) == 1


@pytest.mark.postgres
def test_two_replicas_receiving_one_key_at_once_create_one_subscriber(
    relay_factory: Callable[..., RelayServer], pg_url: str
) -> None:
    replicas = [relay_factory(database_url=pg_url) for _ in range(2)]
    for round_ in range(5):
        key = f"replicas-{round_}"
        answers = race(8, lambda n, key=key: post(replicas[n % 2], "/v1/subscribers", key, HOOK))
        assert_one_ran(answers)
    assert len(subscribers(replicas[0])) == 5


@pytest.mark.postgres
def test_a_request_reusing_a_key_while_the_first_runs_is_told_to_retry(
    relay_factory: Callable[..., RelayServer], pg_url: str
) -> None:
    """The first request is held inside the store (subscriber changes wait for the lock this
    test holds) after it claimed its key: the second is answered 409 at once."""
    relay = relay_factory(database_url=pg_url)
    with psycopg.connect(pg_url) as holder, psycopg.connect(pg_url, autocommit=True) as reader:
        holder.execute("SELECT pg_advisory_xact_lock(%s::int, 0)", (LOCK_SUBSCRIBERS,))
        results: list[httpx.Response] = []
        first = threading.Thread(
            target=lambda: results.append(post(relay, "/v1/subscribers", "slow", HOOK))
        )
        first.start()
        wait_for(
            lambda: (
                reader.execute(
                    "SELECT count(*) FROM idempotency_keys WHERE status IS NULL"
                ).fetchone()
                == (1,)
            )
        )
        running = post(relay, "/v1/subscribers", "slow", HOOK)
        assert running.status_code == 409, running.text
        assert error_code(running) == "idempotency_key_in_progress"
        assert running.headers["retry-after"] == "1"
        holder.commit()  # the first request goes on
        first.join(timeout=10)
    (answer,) = results
    assert answer.status_code == 201, answer.text
    again = post(relay, "/v1/subscribers", "slow", HOOK)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == answer.content
    assert len(subscribers(relay)) == 1


def test_an_invalid_key_is_refused(relay: RelayServer) -> None:
    # (DEL and most control characters are refused sooner, by the HTTP parser.)
    for key in ["", "k" * 256, "tab\there", b"caf\xe9"]:
        answer = post(relay, "/v1/subscribers", key, HOOK)
        assert answer.status_code == 400, (key, answer.text)
        assert error_code(answer) == "invalid_idempotency_key"
    twice = relay.client.post(
        "/v1/subscribers",
        json=HOOK,
        headers=[*relay.admin.items(), ("idempotency-key", "a"), ("idempotency-key", "b")],
    )
    assert twice.status_code == 400
    assert error_code(twice) == "invalid_idempotency_key"
    assert subscribers(relay) == []
    longest = "k" * 255
    assert post(relay, "/v1/subscribers", longest, HOOK).status_code == 201
    assert post(relay, "/v1/subscribers", longest, HOOK).headers["idempotent-replayed"] == "true"
    assert post(relay, "/v1/subscribers", "with spaces ~!", HOOK).status_code == 201
    assert len(subscribers(relay)) == 2


def test_a_refusal_is_kept_but_a_failure_is_not(relay: RelayServer) -> None:
    """A 4xx is the answer to that request for good; a 5xx is the relay's failure, and the
    client's retry with the same key runs the request again."""
    refused = post(relay, "/v1/subscribers", "bad-url", {"url": "not a url"})
    assert 400 <= refused.status_code < 500, refused.text
    again = post(relay, "/v1/subscribers", "bad-url", {"url": "not a url"})
    assert (again.status_code, again.content) == (refused.status_code, refused.content)
    assert again.headers["idempotent-replayed"] == "true"

    refuse_subscriber_inserts(relay, True)
    failed = post(relay, "/v1/subscribers", "fails-once", HOOK)
    assert failed.status_code >= 500, failed.text
    refuse_subscriber_inserts(relay, False)
    retried = post(relay, "/v1/subscribers", "fails-once", HOOK)
    assert retried.status_code == 201, retried.text
    assert "idempotent-replayed" not in retried.headers
    assert len(subscribers(relay)) == 1


def test_keys_belong_to_the_credential_that_sent_them(
    relay_factory: Callable[..., RelayServer],
) -> None:
    first = relay_factory()
    assert post(first, "/v1/subscribers", "shared-key", HOOK).status_code == 201
    first.stop()
    # The same database, another admin token: the same key is another client's key.
    second = relay_factory(admin_token=Secret("another-admin-token"))
    answer = post(second, "/v1/subscribers", "shared-key", HOOK, token="another-admin-token")
    assert answer.status_code == 201, answer.text
    assert "idempotent-replayed" not in answer.headers
    assert len(subscribers(second, token="another-admin-token")) == 2


def test_minting_and_redelivering_with_a_key_happen_once(
    relay_factory: Callable[..., RelayServer], sink: SubscriberServer
) -> None:
    relay = relay_factory()
    minted = post(relay, "/v1/callback-urls", "mint-1", {"provider": "evolink"})
    assert post(relay, "/v1/callback-urls", "mint-1", {"provider": "evolink"}).json() == (
        minted.json()
    )
    sink.secrets.append(str(relay.add_subscriber(sink.url)["secret"]))
    assert relay.post_callback(minted.json()["url"], EVOLINK_COMPLETED).status_code == 200
    (delivered,) = relay.wait_deliveries(1, "succeeded")
    event_id = delivered["event_id"]
    path = f"/v1/events/{event_id}/redeliver"
    first = post(relay, path, "redeliver-1", {})
    again = post(relay, path, "redeliver-1", {})
    assert first.status_code == 202, first.text
    assert (again.status_code, again.content) == (202, first.content)
    assert again.headers["idempotent-replayed"] == "true"
    assert len(relay.wait_deliveries(2, "succeeded", event_id=event_id)) == 2
    relay.wait_settled()
    assert len(relay.deliveries(event_id=event_id)) == 2  # the original and one redelivery
    # Replaying a window: the second request is answered, not run.
    window = post(relay, "/v1/deliveries/replay", "replay-1", {})
    assert window.status_code == 202
    assert (
        post(relay, "/v1/deliveries/replay", "replay-1", {}).headers["idempotent-replayed"]
        == "true"
    )


def test_the_document_lists_the_header_on_exactly_these_operations() -> None:
    documented = {
        (method, path)
        for path, item in document()["paths"].items()
        for method, operation in item.items()
        if any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", []))
    }
    assert documented == {
        ("post", "/v1/subscribers"),
        ("post", "/v1/callback-urls"),
        ("post", "/v1/watches"),
        ("post", "/v1/deliveries/replay"),
        ("post", "/v1/deliveries/{delivery_id}/replay"),
        ("post", "/v1/events/{event_id}/redeliver"),
    }
    for method, path in documented:
        responses = document()["paths"][path][method]["responses"]
        assert "`idempotency_key_reused`" in responses["409"]["description"]
        assert "`invalid_idempotency_key`" in responses["400"]["description"]


# -- helpers ------------------------------------------------------------------------------------


def race(count: int, send: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """``send(n)`` from ``count`` threads released together."""
    barrier = threading.Barrier(count)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        barrier.wait()
        answer = send(n)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(answers) == count
    return answers


def assert_one_ran(answers: list[httpx.Response]) -> None:
    """One answer ran the request; the others are its answer again, or told to retry."""
    ran = [a for a in answers if a.status_code == 201 and "idempotent-replayed" not in a.headers]
    assert len(ran) == 1, [(a.status_code, a.headers.get("idempotent-replayed")) for a in answers]
    for answer in answers:
        if answer.status_code == 201:
            assert answer.content == ran[0].content
        else:
            assert answer.status_code == 409, answer.text
            assert error_code(answer) == "idempotency_key_in_progress"


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not met in time")


def refuse_subscriber_inserts(relay: RelayServer, refuse: bool) -> None:
    """Make the store fail (or stop failing) to insert a subscriber, as a bug would."""
    url = relay.settings.database_url
    if url.startswith("sqlite"):
        statement = (
            "CREATE TRIGGER refuse BEFORE INSERT ON subscribers"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
            if refuse
            else "DROP TRIGGER refuse"
        )
        relay.sql(lambda conn: conn.execute(statement))
        return
    with psycopg.connect(url, autocommit=True) as conn:
        if refuse:
            conn.execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql"
                " AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
            )
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON subscribers"
                " FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
        else:
            conn.execute("DROP TRIGGER refuse ON subscribers")
