"""Receiving callbacks through a real relay: source checks, answers, dedup, durability."""

from __future__ import annotations

import copy
import json
import socket
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_network
from pathlib import Path

import httpx
import jsonschema
import pytest
from starlette.datastructures import Secret

from service.app import callback_path_params
from service.providers.apiframe import apiframe_signature
from tests.conftest import EVOLINK_COMPLETED, RelayServer

SCHEMA = json.loads(
    (Path(__file__).parent.parent / "service/schemas/generation-event.schema.json").read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def evolink(task_id: str, status: str = "completed", progress: int = 100) -> dict[str, object]:
    payload = copy.deepcopy(EVOLINK_COMPLETED)
    payload.update(id=task_id, status=status, progress=progress)
    return payload


def assert_error(response: object, status: int, code: str) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def test_callback_accepted_and_normalized(relay_server: RelayServer) -> None:
    """A verbatim Evolink completion becomes one stored CloudEvent carrying the URL's metadata."""
    url = relay_server.mint(metadata={"user_id": "u-42", "job": "poster"})
    response = relay_server.post_callback(url, EVOLINK_COMPLETED)
    assert response.status_code == 200
    answer = response.json()
    assert answer["received"] is True and answer["duplicate"] is False
    (event,) = relay_server.events()
    # The list adds the relay's own record (relay.state) beside the CloudEvent as delivered.
    assert event.pop("relay") == {"state": "emitted"}
    VALIDATOR.validate(event)
    assert event["id"] == answer["event_id"]
    assert event["type"] == "generation.succeeded"
    assert event["source"] == "/providers/evolink"
    assert event["subject"] == EVOLINK_COMPLETED["id"]
    assert event["data"]["metadata"] == {"user_id": "u-42", "job": "poster"}
    assert event["data"]["outputs"] == [
        {"url": EVOLINK_COMPLETED["results"][0], "media_type": "video"}  # type: ignore[index]
    ]
    assert event["data"]["raw"] == EVOLINK_COMPLETED
    single = relay_server.client.get(f"/v1/events/{event['id']}", headers=relay_server.admin)
    assert single.status_code == 200
    assert single.json()["data"] == event["data"]


def test_callback_duplicate_creates_nothing(relay_server: RelayServer) -> None:
    """A provider's retry of the same update answers 200 duplicate and stores nothing new."""
    url = relay_server.mint()
    first = relay_server.post_callback(url, EVOLINK_COMPLETED).json()
    for _ in range(3):
        again = relay_server.post_callback(url, EVOLINK_COMPLETED)
        assert again.status_code == 200
        assert again.json() == {"received": True, "event_id": first["event_id"], "duplicate": True}
    assert len(relay_server.events()) == 1


def test_callback_regression_is_superseded(relay_server: RelayServer) -> None:
    """Updates after a terminal one are stored as superseded, never emitted."""
    url = relay_server.mint()
    relay_server.post_callback(url, evolink("t-1", "processing", 40))
    relay_server.post_callback(url, evolink("t-1", "completed", 100))
    late = relay_server.post_callback(url, evolink("t-1", "processing", 80))
    other_terminal = relay_server.post_callback(url, evolink("t-1", "failed", 0))
    for response in (late, other_terminal):
        assert response.status_code == 200
        assert response.json()["superseded"] is True
    # The provider's retry of a superseded update is a duplicate, and still says superseded.
    retried = relay_server.post_callback(url, evolink("t-1", "processing", 80)).json()
    assert retried == {
        "received": True,
        "event_id": late.json()["event_id"],
        "duplicate": True,
        "superseded": True,
    }
    again = relay_server.post_callback(url, evolink("t-1", "completed", 100)).json()
    assert again["duplicate"] is True and "superseded" not in again
    states = relay_server.sql(
        lambda conn: [r[0] for r in conn.execute("SELECT state FROM events WHERE task_id = 't-1'")]
    )
    assert sorted(states) == ["emitted", "emitted", "superseded", "superseded"]


def test_callback_survives_restart(relay_factory: Callable[..., RelayServer]) -> None:
    """What was answered 2xx is in the SQLite file after the relay stops and starts again."""
    first = relay_factory()
    url = first.mint()
    event_id = first.post_callback(url, EVOLINK_COMPLETED).json()["event_id"]
    first.stop()
    second = relay_factory()
    assert [event["id"] for event in second.events()] == [event_id]
    # The URL minted before the restart still works: its key and metadata were persisted.
    retried = second.client.post(
        url.replace(first.base_url, second.base_url), json=EVOLINK_COMPLETED
    )
    assert retried.json()["duplicate"] is True


@pytest.mark.parametrize(
    ("mutate", "status", "code"),
    [
        (lambda url: url + "x", 401, "invalid_token"),
        (lambda url: url.rsplit("/", 1)[0] + "/not-a-token", 401, "invalid_token"),
        (lambda url: url.replace("/evolink/", "/apiframe/"), 401, "invalid_token"),
        (lambda url: url.replace("/evolink/", "/acme/"), 404, "unknown_provider"),
    ],
)
def test_callback_token_refusals(
    relay_server: RelayServer, mutate: Callable[[str], str], status: int, code: str
) -> None:
    """Tampered tokens, tokens for another provider and unknown providers are refused."""
    url = relay_server.mint()
    assert_error(relay_server.post_callback(mutate(url), EVOLINK_COMPLETED), status, code)
    assert relay_server.events() == []


def test_callback_token_expired(relay_server: RelayServer) -> None:
    """A genuine token past its expiry gets 401 token_expired."""
    url = relay_server.mint(ttl_seconds=1)
    time.sleep(1.1)
    assert_error(relay_server.post_callback(url, EVOLINK_COMPLETED), 401, "token_expired")


def test_callback_token_signed_with_retired_key(relay_factory: Callable[..., RelayServer]) -> None:
    """Rotation: old URLs verify while the old key is listed, and are refused once it is dropped."""
    old = relay_factory(secret_keys=(Secret("old-key"),))
    url_path = old.mint().removeprefix(old.base_url)
    old.stop()
    rotated = relay_factory(secret_keys=(Secret("new-key"), Secret("old-key")))
    assert rotated.client.post(url_path, json=EVOLINK_COMPLETED).status_code == 200
    rotated.stop()
    retired = relay_factory(secret_keys=(Secret("new-key"),))
    assert_error(retired.client.post(url_path, json=evolink("t-2")), 401, "invalid_token")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"\xff\xfe\x00", 400, "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
        (b"[1, 2]", 422, "invalid_payload"),
        (b'"completed"', 422, "invalid_payload"),
        (b'{"status": "completed"}', 422, "invalid_payload"),
    ],
)
def test_callback_bad_bodies(
    relay_server: RelayServer, body: bytes, status: int, code: str
) -> None:
    """Malformed or shapeless bodies get a 4xx JSON error, never a 500."""
    url = relay_server.mint()
    response = relay_server.client.post(url, content=body)
    assert_error(response, status, code)


def test_callback_unknown_status_kept_as_running(relay_server: RelayServer) -> None:
    """An unknown status is accepted, mapped to running, never refused."""
    url = relay_server.mint()
    response = relay_server.post_callback(url, evolink("t-odd", "warming_up", 5))
    assert response.status_code == 200
    (event,) = relay_server.events()
    assert event["data"]["status"] == "running"
    assert event["data"]["raw"]["status"] == "warming_up"


def test_callback_too_large(relay_factory: Callable[..., RelayServer]) -> None:
    """Bodies over RELAY_MAX_BODY_BYTES get 413, declared or streamed (chunked)."""
    server = relay_factory(max_body_bytes=1000)
    url = server.mint()
    big = json.dumps(evolink("t-big") | {"pad": "x" * 2000}).encode()
    assert_error(server.client.post(url, content=big), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 100):
            yield big[start : start + 100]

    assert_error(server.client.post(url, content=chunks()), 413, "payload_too_large")
    assert server.events() == []


def test_callback_source_allowlist(relay_factory: Callable[..., RelayServer]) -> None:
    """RELAY_EVOLINK_ALLOWED_IPS refuses other sources; X-Forwarded-For counts only from proxies."""
    closed = relay_factory(allowed_ips={"evolink": (ip_network("10.0.0.0/8"),)})
    url = closed.mint()
    assert_error(closed.post_callback(url, EVOLINK_COMPLETED), 403, "source_not_allowed")
    spoofed = closed.post_callback(url, EVOLINK_COMPLETED, headers={"x-forwarded-for": "10.1.2.3"})
    assert_error(spoofed, 403, "source_not_allowed")
    closed.stop()
    proxied = relay_factory(
        allowed_ips={"evolink": (ip_network("10.0.0.0/8"),)},
        trusted_proxies=(ip_network("127.0.0.0/8"),),
    )
    url = proxied.mint()
    ok = proxied.post_callback(url, EVOLINK_COMPLETED, headers={"x-forwarded-for": "10.1.2.3"})
    assert ok.status_code == 200
    refused = proxied.post_callback(url, evolink("t-3"), headers={"x-forwarded-for": "8.8.8.8"})
    assert_error(refused, 403, "source_not_allowed")


APIFRAME_COMPLETED = {
    "event": "completed",
    "jobId": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
    "status": "COMPLETED",
    "progress": 100,
    "result": "https://cdn.apiframe.ai/results/a1b2c3d4.png",
    "model": "midjourney",
    "creditCost": 10,
    "completedAt": "2026-03-15T10:00:32.000Z",
}


def test_apiframe_signature_checked_on_raw_body(relay_factory: Callable[..., RelayServer]) -> None:
    """Apiframe v2: the HMAC over the raw body, with RELAY_APIFRAME_SIGNATURE=required."""
    server = relay_factory(apiframe_api_key=Secret("af-key"), apiframe_signature="required")
    url = server.mint("apiframe")
    body = json.dumps(APIFRAME_COMPLETED).encode()
    signature = apiframe_signature("af-key", body)
    missing = server.client.post(url, content=body)
    assert_error(missing, 401, "invalid_signature")
    other_body = server.client.post(
        url, content=body + b" ", headers={"x-webhook-signature": f"sha256={signature}"}
    )
    assert_error(other_body, 401, "invalid_signature")
    for header in (f"sha256={signature}", signature):
        ok = server.client.post(url, content=body, headers={"x-webhook-signature": header})
        assert ok.status_code == 200, ok.text
    (event,) = server.events()
    assert event["data"]["status"] == "succeeded"
    assert event["data"]["outputs"] == [
        {"url": APIFRAME_COMPLETED["result"], "media_type": "image"}
    ]


def test_apiframe_v1_webhook_secret(relay_factory: Callable[..., RelayServer]) -> None:
    """Apiframe v1: the x-webhook-secret header must match RELAY_APIFRAME_WEBHOOK_SECRET."""
    server = relay_factory(apiframe_webhook_secret=Secret("s3cret"))
    url = server.mint("apiframe")
    payload = {
        "task_id": "29e9",
        "task_type": "kling-2.6-video",
        "video_url": "https://x/v.mp4",
        "status": "finished",
        "percentage": 100,
    }
    assert_error(server.post_callback(url, payload), 401, "invalid_signature")
    wrong = server.post_callback(url, payload, headers={"x-webhook-secret": "nope"})
    assert_error(wrong, 401, "invalid_signature")
    ok = server.post_callback(url, payload, headers={"x-webhook-secret": "s3cret"})
    assert ok.status_code == 200


def test_storage_unavailable_gives_503_then_recovers(relay_server: RelayServer) -> None:
    """When SQLite cannot write (disk full), callbacks get 503, and the relay recovers by itself."""
    url = relay_server.mint(reusable=True)

    def limit_pages(conn: object) -> None:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()  # type: ignore[attr-defined]
        conn.execute(f"PRAGMA max_page_count={pages}")  # type: ignore[attr-defined]

    relay_server.sql(limit_pages)
    refused = [
        relay_server.post_callback(url, evolink(f"t-full-{n}") | {"pad": "x" * 20_000})
        for n in range(5)
    ]
    assert any(r.status_code == 503 for r in refused)
    for response in refused:
        if response.status_code != 200:
            assert_error(response, 503, "storage_unavailable")
    accepted = {r.json()["event_id"] for r in refused if r.status_code == 200}
    relay_server.sql(lambda conn: conn.execute("PRAGMA max_page_count=1073741823").fetchone())
    again = relay_server.post_callback(url, evolink("t-after"))
    assert again.status_code == 200
    assert relay_server.client.get("/readyz").status_code == 200  # ready again, by itself
    stored = {event["id"] for event in relay_server.events(limit=100)}
    # Exactly what was answered 2xx is stored: nothing refused slipped in, nothing accepted lost.
    assert stored == accepted | {again.json()["event_id"]}


def test_events_list_filters_and_pagination(relay_server: RelayServer) -> None:
    """GET /v1/events filters by provider, task and status and pages with a cursor."""
    url = relay_server.mint(reusable=True)
    for n in range(7):
        relay_server.post_callback(url, evolink(f"t-page-{n}", "processing", 10))
    relay_server.post_callback(url, evolink("t-page-0", "completed", 100))
    assert len(relay_server.events(status="running")) == 7
    assert [e["data"]["status"] for e in relay_server.events(task_id="t-page-0")] == [
        "succeeded",
        "running",
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = relay_server.client.get(
            "/v1/events", params=params, headers=relay_server.admin
        ).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 8
    assert_error(
        relay_server.client.get(
            "/v1/events", params={"cursor": "bogus"}, headers=relay_server.admin
        ),
        400,
        "invalid_cursor",
    )
    assert_error(
        relay_server.client.get(
            "/v1/events", params={"status": "done"}, headers=relay_server.admin
        ),
        400,
        "invalid_query",
    )


def test_raw_payload_is_kept_verbatim(relay_server: RelayServer) -> None:
    """data.raw is the provider's JSON as sent: big numbers keep every digit, NaN is refused."""
    url = relay_server.mint()
    body = (
        b'{ "id": "t-raw", "status": "completed",'
        b' "created": 123456789012345678901234567890,\n "progress": 100 }\n'
    )
    assert relay_server.client.post(url, content=body).status_code == 200
    (event,) = relay_server.events()
    assert event["data"]["raw"] == json.loads(body)
    assert event["data"]["raw"]["created"] == 123456789012345678901234567890
    assert event.pop("relay") == {"state": "emitted"}
    VALIDATOR.validate(event)
    nan = relay_server.client.post(url, content=b'{"id": "t-nan", "status": "completed", "x": NaN}')
    assert_error(nan, 400, "invalid_json")


def test_body_cut_short_is_a_4xx_not_a_500(relay_server: RelayServer) -> None:
    """A caller that leaves mid-body (Content-Length longer than what it sent) is counted as
    ``incomplete_body``, not as an unhandled 500."""
    url = httpx.URL(relay_server.mint())
    with socket.create_connection((url.host, url.port), timeout=5) as sock:
        head = f"POST {url.raw_path.decode()} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        sock.sendall(head.encode() + b"{}")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1024) == b""  # nobody is left to answer
    deadline = time.time() + 5
    while time.time() < deadline:
        metrics = relay_server.client.get("/metrics", headers=relay_server.admin).text
        if 'outcome="incomplete_body"' in metrics:
            break
        time.sleep(0.05)
    assert 'outcome="incomplete_body"' in metrics
    assert 'outcome="http_500"' not in metrics


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/callbacks/evolink/"), ("GET", "/v1/events/"), ("GET", "/healthz/")],
)
def test_trailing_slash_is_a_404_not_a_redirect(
    relay_server: RelayServer, method: str, path: str
) -> None:
    """A stray trailing slash answers like any unknown path: 404 JSON, never an empty 307.
    (With the admin token: without it, anything under /v1 is 401 before routing.)"""
    answer = relay_server.client.request(method, path, headers=relay_server.admin)
    assert_error(answer, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/callbacks/evolink/some-token", 405, "method_not_allowed"),
        ("PUT", "/callbacks/evolink", 405, "method_not_allowed"),
        ("POST", "/callbacks/evolink/some-token/more", 404, "not_found"),
        ("POST", "/callbacks//some-token", 404, "not_found"),
        ("POST", "/callbacks/", 404, "not_found"),
    ],
)
def test_callback_paths_of_another_shape_or_method_answer_as_routed(
    relay_server: RelayServer, method: str, path: str, status: int, code: str
) -> None:
    """Callbacks skip Starlette's layers (``RelayApp``), but only those of the routes' shape
    and method: anything else gets the routing table's 404 or 405, as JSON, and is logged."""
    answer = relay_server.client.request(method, path, content=b"{}")
    assert_error(answer, status, code)
    assert answer.headers["x-request-id"].startswith("req_")
    if status == 405:
        assert answer.headers["allow"] == "POST"


def test_a_callback_answer_carries_its_request_id(relay_server: RelayServer) -> None:
    answer = relay_server.client.post(relay_server.mint(), json=EVOLINK_COMPLETED)
    assert answer.status_code == 200 and answer.json()["received"] is True
    assert answer.headers["x-request-id"].startswith("req_")
    assert answer.headers["content-type"] == "application/json"
    assert int(answer.headers["content-length"]) == len(answer.content)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/callbacks/evolink/tok.en", {"provider": "evolink", "token": "tok.en"}),
        ("/callbacks/rivya", {"provider": "rivya"}),
        ("/callbacks/evolink/tok/extra", None),
        ("/callbacks/evolink/", None),
        ("/callbacks//tok", None),
        ("/callbacks/", None),
        ("/callbacks", None),
        ("/v1/events", None),
    ],
)
def test_callback_path_params_match_what_the_callback_routes_match(
    path: str, params: dict[str, str] | None
) -> None:
    """The shortcut to the callback endpoint takes exactly the paths its two routes take."""
    assert callback_path_params(path) == params
