"""The admin API's guard and the CLI, each through the real thing."""

# ruff: noqa: F811 (the database fixture is imported, used as a parameter)
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import EVOLINK_COMPLETED, RelayServer, bound_socket
from tests.test_attribution import database  # noqa: F401 (fixture)

ADMIN_ROUTES = [
    ("POST", "/v1/callback-urls"),
    ("GET", "/v1/events"),
    ("GET", "/v1/events/evt_x"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", "Basic dGVzdA==", "Bearer", "bearer test-admin-tokenx"]
)
def test_admin_routes_refuse_without_token(
    relay_server: RelayServer, method: str, path: str, header: str | None
) -> None:
    """Every /v1 route answers 401 JSON to a missing or wrong bearer token."""
    headers = {"authorization": header} if header else {}
    response = relay_server.client.request(method, path, headers=headers, json={})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_admin_token_is_compared_exactly(relay_server: RelayServer) -> None:
    """Spaces inside the value are part of what is compared: only the exact ``Bearer <token>``
    is accepted. Whitespace after the value is not part of a field value (RFC 9110, 5.5): the
    HTTP parser drops it, so the token sent that way is the exact one."""
    for header in ("Bearer  test-admin-token", "Bearer \ttest-admin-token"):
        response = relay_server.client.get("/v1/events", headers={"authorization": header})
        assert response.status_code == 401, repr(header)
    # httpx refuses to send a value ending in a space: written on the socket by hand.
    host, port = relay_server.base_url.removeprefix("http://").split(":")
    for value, status in (
        (b"Bearer test-admin-tokenx", b"401"),
        (b"Bearer test-admin-toke n", b"401"),
        (b"Bearer test-admin-token ", b"200"),
        (b"Bearer test-admin-token", b"200"),
    ):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(
                b"GET /v1/events HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n"
                b"Authorization: " + value + b"\r\n\r\n"
            )
            assert sock.makefile("rb").readline().split(b" ")[1] == status, value


def test_mint_url_validation(relay_server: RelayServer) -> None:
    """Minting refuses unknown providers, bad TTLs and non-object metadata with 4xx JSON."""
    cases = [
        ({"provider": "acme"}, 404, "unknown_provider"),
        ({}, 400, "invalid_provider"),
        ({"provider": "evolink", "ttl_seconds": 0}, 400, "invalid_ttl"),
        ({"provider": "evolink", "ttl_seconds": "7d"}, 400, "invalid_ttl"),
        ({"provider": "evolink", "metadata": [1]}, 400, "invalid_metadata"),
    ]
    for body, status, code in cases:
        response = relay_server.client.post(
            "/v1/callback-urls", json=body, headers=relay_server.admin
        )
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["code"] == code
    bad_json = relay_server.client.post(
        "/v1/callback-urls", content=b"{", headers=relay_server.admin
    )
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 30_000 + b"]" * 30_000,  # deeper than the json module recurses
        b'{"provider": "evolink", "metadata": {"a": ' + b"[" * 300 + b"]" * 300 + b"}}",
        b'{"provider": "evolink", "metadata": {"a": 18446744073709551616}}',  # beyond 64 bits
        b'{"provider": "evolink", "metadata": {"a": "\\ud800"}}',  # a lone surrogate
        b'{"provider": "evolink", "metadata": {"a": NaN}}',
    ],
)
def test_admin_json_the_store_cannot_hold_is_refused(
    relay_server: RelayServer, body: bytes
) -> None:
    """Bodies the json module parses but orjson cannot store are 400 invalid_json, not 500."""
    for path in ("/v1/callback-urls", "/v1/subscribers", "/v1/watches"):
        response = relay_server.client.post(path, content=body, headers=relay_server.admin)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["code"] == "invalid_json"


def test_minted_url_is_short_and_expires_in_seven_days(relay_server: RelayServer) -> None:
    """A minted URL stays far under Evolink's 2,048 characters and defaults to a 7-day life."""
    response = relay_server.client.post(
        "/v1/callback-urls",
        json={"provider": "evolink", "metadata": {"k": "v" * 5000}},
        headers=relay_server.admin,
    ).json()
    assert len(response["url"]) < 200
    assert response["expires_at"].endswith("Z")


def _relay(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_serve_generates_secrets_and_never_logs_tokens(tmp_path: Path) -> None:
    """`relay serve` with no configuration generates and keeps its secrets; logs hold no token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    env.update(
        RELAY_DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}",
        RELAY_PUBLIC_URL=f"http://127.0.0.1:{port}",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        # A fresh interpreter, migrations and uvicorn: seconds on a busy machine. Waited for
        # (with a generous bound) rather than assumed.
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "relay serve exited"
            assert time.monotonic() < deadline, "relay serve did not answer /healthz in 60 s"
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        token = _relay("admin-token", env=env).stdout.strip()
        assert len(token) >= 32
        minted = _relay("mint-url", "evolink", "--ttl", "2h", "--meta", "user=u1", env=env)
        assert minted.returncode == 0, minted.stderr
        url = json.loads(minted.stdout)["url"]
        assert json.loads(minted.stdout)["reusable"] is False
        shared = _relay("mint-url", "evolink", "--reusable", env=env)
        assert json.loads(shared.stdout)["reusable"] is True
        accepted = httpx.post(url, json=EVOLINK_COMPLETED)
        assert accepted.status_code == 200
        httpx.post(url + "tampered", json=EVOLINK_COMPLETED)
        events = httpx.get(f"{base}/v1/events", headers={"authorization": f"Bearer {token}"})
        assert events.json()["items"][0]["data"]["metadata"] == {"user": "u1"}
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    url_token = url.rsplit("/", 1)[1]
    lines = [line for line in stderr.splitlines() if line.startswith("{")]
    assert any('"/callbacks/evolink/***"' in line for line in lines)
    assert url_token not in stderr
    # The generated admin token is shown only on a terminal (stderr here is a pipe): the log
    # line says where to get it.
    assert token not in stderr
    (announced,) = [json.loads(line) for line in lines if "admin_token_generated" in line]
    assert "relay admin-token" in announced["hint"]
    # A second start reuses the persisted secrets: the old URL still verifies.
    assert _relay("admin-token", env=env).stdout.strip() == token


def test_cli_mint_url_refuses_unknown_provider(tmp_path: Path) -> None:
    """`relay mint-url` explains a bad provider on stderr and exits non-zero."""
    env = dict(os.environ, RELAY_DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}")
    result = _relay("mint-url", "acme", env=env)
    assert result.returncode == 2
    assert "unknown_provider" in result.stderr


def test_forged_cursors_and_nul_characters_are_400(
    relay_factory: Callable[..., RelayServer], database: dict[str, Any]
) -> None:
    """A cursor over 64 bits and a NUL in a filter or an id are 400 ``invalid_*``, never 500,
    on both stores."""
    relay = relay_factory(**database)
    try:
        assert relay.post_callback(relay.mint(), EVOLINK_COMPLETED).status_code == 200
        for position in (2**63, 2**64 + 1, -1):
            cursor = base64.urlsafe_b64encode(json.dumps([position]).encode()).decode()
            for path in ("/v1/events", "/v1/deliveries", "/v1/watches"):
                answer = relay.client.get(path, params={"cursor": cursor}, headers=relay.admin)
                assert answer.status_code == 400, (path, position, answer.text)
                assert answer.json()["error"]["code"] == "invalid_cursor"
        for path, params in (
            ("/v1/events", {"task_id": "t\x00"}),
            ("/v1/events", {"provider": "evolink\x00"}),
            ("/v1/deliveries", {"event_id": "evt\x00"}),
            ("/v1/watches", {"task_id": "t\x00"}),
            ("/v1/events/evt_1%00", {}),
            ("/v1/deliveries/dlv_1%00", {}),
            ("/v1/watches/wch_1%00", {}),
        ):
            answer = relay.client.get(path, params=params, headers=relay.admin)
            assert answer.status_code == 400, (path, params, answer.text)
            assert answer.json()["error"]["code"] == "invalid_query"
    finally:
        relay.stop()


def test_unknown_parameters_and_fields_are_refused(relay_server: RelayServer) -> None:
    """Each operation's query and body are declared shapes: a parameter or a field they do not
    declare is 400 with the shape's code, never silently ignored."""
    client, admin = relay_server.client, relay_server.admin
    subscriber = relay_server.add_subscriber("http://127.0.0.1:9/hook")

    def refused(method: str, path: str, code: str, named: str, **kwargs: Any) -> None:
        answer = client.request(method, path, headers=admin, **kwargs)
        assert answer.status_code == 400, (method, path, answer.text)
        assert answer.json()["error"]["code"] == code, (method, path, answer.text)
        assert named in answer.json()["error"]["message"], (method, path, answer.text)

    for path in ("/v1/events", "/v1/deliveries", "/v1/watches", "/v1/subscribers"):
        refused("GET", f"{path}?colour=red", "invalid_query", "colour")
        refused("GET", f"{path}?limit=1&limit=2", "invalid_query", "limit")
        refused("GET", f"{path}?limit=0", "invalid_query", "limit")
        assert client.get(f"{path}?limit=1", headers=admin).status_code == 200
    refused("GET", "/v1/events?status=null", "invalid_query", "status")
    refused("GET", f"/v1/subscribers/{subscriber['id']}?colour=red", "invalid_query", "colour")
    refused("POST", "/v1/callback-urls?colour=red", "invalid_query", "colour", json={})
    refused(
        "POST",
        "/v1/callback-urls",
        "invalid_request",
        "colour",
        json={"provider": "evolink", "colour": "red"},
    )
    refused(
        "POST",
        "/v1/subscribers",
        "invalid_subscriber",
        "colour",
        json={"url": "http://127.0.0.1:9/x", "colour": "red"},
    )
    refused(
        "POST",
        "/v1/subscribers",
        "invalid_subscriber",
        "description",
        json={"url": "http://127.0.0.1:9/x", "description": "x" * 501},
    )
    refused(
        "PATCH",
        f"/v1/subscribers/{subscriber['id']}",
        "invalid_subscriber",
        "colour",
        json={"colour": "red"},
    )
    refused("POST", "/v1/deliveries/dlv_x/replay", "invalid_query", "colour", json={"colour": 1})
    refused("POST", "/v1/deliveries/replay", "invalid_query", "colour", json={"colour": 1})
    refused("POST", "/v1/events/evt_x/redeliver", "invalid_request", "colour", json={"colour": 1})
    refused("POST", "/v1/watches/wch_x/resolve", "invalid_url_id", "colour", json={"colour": 1})
    # What the shapes allow still passes, and a PATCH with nothing in it changes nothing.
    same = client.patch(f"/v1/subscribers/{subscriber['id']}", json={}, headers=admin)
    assert same.status_code == 200
    assert same.json() == {k: v for k, v in subscriber.items() if k != "secret"}


def test_answers_match_their_declared_shapes_on_both_stores(
    relay_factory: Callable[..., RelayServer], database: dict[str, Any]
) -> None:
    """What each store reads back (deliveries with attempts, subscribers, watches, callback
    URLs) converts strictly to the declared response shapes."""
    import msgspec

    from service.shapes.callback_urls import CallbackUrl
    from service.shapes.deliveries import DeliveryDetail, DeliveryPage
    from service.shapes.subscribers import SubscriberPage, SubscriberWithSecret

    relay = relay_factory(**database)
    client, admin = relay.client, relay.admin
    try:
        created = relay.add_subscriber("http://127.0.0.1:9/refused")  # nothing listens there
        msgspec.convert(created, SubscriberWithSecret, strict=True)
        minted = client.post("/v1/callback-urls", json={"provider": "evolink"}, headers=admin)
        msgspec.convert(minted.json(), CallbackUrl, strict=True)
        assert relay.post_callback(minted.json()["url"], EVOLINK_COMPLETED).status_code == 200
        deadline = time.monotonic() + 20
        while True:
            page = client.get("/v1/deliveries", headers=admin)
            assert page.status_code == 200, page.text
            deliveries = msgspec.convert(page.json(), DeliveryPage, strict=True).items
            if deliveries and deliveries[0].attempt_count >= 1:
                break
            assert time.monotonic() < deadline, page.json()
            time.sleep(0.1)
        detail = client.get(f"/v1/deliveries/{deliveries[0].id}", headers=admin)
        shown = msgspec.convert(detail.json(), DeliveryDetail, strict=True)
        assert shown.attempts and shown.attempts[0].trigger == "scheduled"
        assert shown.attempts[0].error is not None
        listed = client.get("/v1/subscribers", headers=admin).json()
        assert msgspec.convert(listed, SubscriberPage, strict=True).items[0].id == created["id"]
    finally:
        relay.stop()
