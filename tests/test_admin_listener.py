"""The admin surface on a listener of its own (``RELAY_ADMIN_LISTEN``, ``relay serve
--admin-host/--admin-port``): real ``relay serve`` processes, real HTTP on both ports."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.cli import _with_admin_flags
from service.listeners import PUBLIC_PATHS, PUBLIC_PREFIXES
from service.openapi import document
from service.request_head import MAX_HEAD_BYTES
from service.settings import ConfigError, ListenAddress, Settings
from tests.conftest import EVOLINK_COMPLETED, bound_socket
from tests.relay_process import ADMIN, RelayProcess
from tests.subscriber_server import SubscriberServer
from tests.test_http_protocol import _read_answers, _read_response, _split

NOT_FOUND = {"error": {"code": "not_found", "message": "Not Found"}}
TOKEN = {"authorization": f"Bearer {ADMIN}"}


def _free_port() -> int:
    sock = bound_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture
def split_relay(tmp_path: Path) -> Iterator[RelayProcess]:
    """A relay whose admin surface listens apart (RELAY_ADMIN_LISTEN), logging at info."""
    relay = RelayProcess(
        tmp_path,
        _free_port(),
        RELAY_ADMIN_LISTEN=f"127.0.0.1:{_free_port()}",
        RELAY_LOG_LEVEL="info",
    )
    relay.log_path = tmp_path / "relay.log"
    yield relay.start()
    relay.stop()


def test_public_port_serves_callbacks_and_health_only(
    split_relay: RelayProcess, tmp_path: Path
) -> None:
    relay = split_relay
    public, admin = relay.base, relay.admin_base
    assert public != admin
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{public}/healthz").status_code == 200
        assert client.get(f"{public}/readyz").status_code == 200
        # The admin surface is not there, with the token or without: the same answer as a
        # path the relay does not know, so the public port does not reveal it.
        unknown = client.get(f"{public}/no-such-path")
        assert unknown.status_code == 404 and unknown.json() == NOT_FOUND
        for method, path in [
            ("GET", "/v1/subscribers"),
            ("POST", "/v1/callback-urls"),
            ("GET", "/ops"),
            ("GET", "/ops/sign-in"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
        ]:
            for headers in ({}, TOKEN):
                answer = client.request(method, f"{public}{path}", headers=headers, json={})
                assert answer.status_code == 404, (method, path)
                assert answer.json() == NOT_FOUND, (method, path)
                assert answer.headers["content-type"] == unknown.headers["content-type"]
        # Archived outputs are fetched by subscribers through the public port: the route
        # itself answers there (no archive configured: its own 404 code).
        archived = client.get(f"{public}/archive/not-a-key")
        assert archived.json()["error"]["code"] == "archived_output_not_found"

        # The admin port serves the admin surface, still behind the token.
        assert client.get(f"{admin}/v1/subscribers").status_code == 401
        assert client.get(f"{admin}/v1/subscribers", headers=TOKEN).status_code == 200
        assert client.get(f"{admin}/metrics").status_code == 401
        assert client.get(f"{admin}/metrics", headers=TOKEN).status_code == 200
        assert client.get(f"{admin}/openapi.json").json()["openapi"] == "3.1.0"
        assert client.get(f"{admin}/ops/sign-in").status_code == 200

        # A callback through the public port reaches a subscriber registered on the admin one.
        sink = SubscriberServer().start()
        try:
            sub = client.post(f"{admin}/v1/subscribers", json={"url": sink.url}, headers=TOKEN)
            sink.secrets.append(sub.json()["secret"])
            minted = client.post(
                f"{admin}/v1/callback-urls", json={"provider": "evolink"}, headers=TOKEN
            ).json()["url"]
            assert minted.startswith(f"{public}/callbacks/evolink/")  # RELAY_PUBLIC_URL
            posted = client.post(minted, json=EVOLINK_COMPLETED)
            assert posted.status_code == 200
            [receipt] = sink.wait_for(1)
            assert receipt.event_id == posted.json()["event_id"]
            assert receipt.verified_with == sink.secrets
        finally:
            sink.stop()

    # One relay behind both listeners: started once, with its delivery worker; the addresses
    # of both listeners said at start.
    assert relay.log_path is not None
    lines = [json.loads(line) for line in relay.log_path.read_text().splitlines()]
    started = [line for line in lines if line["event"] == "relay_started"]
    assert len(started) == 1 and started[0]["worker"] is True
    [listening] = [line for line in lines if line["event"] == "listening"]
    assert listening["public"] == public and listening["admin"] == admin


def test_both_listeners_keep_the_connection_protections(tmp_path: Path) -> None:
    """Bounded heads and the head timeout on each listener; one connection limit over both."""
    relay = RelayProcess(
        tmp_path,
        _free_port(),
        RELAY_ADMIN_LISTEN=f"127.0.0.1:{_free_port()}",
        RELAY_HEADER_TIMEOUT="1",
        RELAY_MAX_CONNECTIONS="3",
    ).start()
    try:
        addresses = [(url.host, url.port) for url in map(httpx.URL, (relay.base, relay.admin_base))]
        for address in addresses:
            with socket.create_connection(address, timeout=10) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nx-big: " + b"a" * MAX_HEAD_BYTES)
                status, _, body = _split(_read_answers(sock))
                assert (status, json.loads(body)["error"]["code"]) == (431, "header_too_large")
            with socket.create_connection(address, timeout=10) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and the rest never comes
                status, _, body = _split(_read_answers(sock))
                assert (status, json.loads(body)["error"]["code"]) == (408, "request_timeout")

        # Three connections kept alive on the public port, idle: a fourth, on the admin port,
        # takes the place of the one that has waited longest.
        request = b"GET /healthz HTTP/1.1\r\nhost: relay\r\n\r\n"
        idle = [socket.create_connection(addresses[0], timeout=10) for _ in range(3)]
        try:
            for sock in idle:
                sock.sendall(request)
                assert _read_response(sock)[0] == 200
            answered = time.monotonic()
            with socket.create_connection(addresses[1], timeout=10) as admin:
                admin.sendall(request)
                assert _read_response(admin)[0] == 200
                assert idle[0].recv(1) == b""
                # Closed for the newcomer, not by uvicorn's keep-alive timeout (5 s).
                assert time.monotonic() - answered < 5
                idle[1].sendall(request)
                assert _read_response(idle[1])[0] == 200
        finally:
            for sock in idle:
                sock.close()
    finally:
        relay.stop()


def _serve(relay: RelayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``relay serve`` expected to exit at once (it cannot start)."""
    return subprocess.run(
        [sys.executable, "-m", "service", "serve", *args],
        env=relay.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_address_in_use_is_one_clear_error(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, 0)
    taken = socket.create_server(("127.0.0.1", 0))  # listening, as another server would be
    try:
        port = str(taken.getsockname()[1])
        free = str(_free_port())
        for args, role in [
            (("--port", free, "--admin-port", port), "admin listener"),
            (("--port", port, "--admin-port", free), "public listener"),
            (("--port", port), ""),  # the one listener
        ]:
            result = _serve(relay, *args)
            assert result.returncode == 1, result.stderr
            named = f" ({role})" if role else ""
            assert result.stderr.splitlines() == [
                f"relay: cannot listen on 127.0.0.1:{port}{named}: Address already in use"
            ]
    finally:
        taken.close()
    # Refused before anything started: no store was created.
    assert not (tmp_path / "crash.db").exists()

    same = _serve(relay, "--port", free, "--admin-port", free)
    assert same.returncode == 2
    assert "admin listener needs a port of its own" in same.stderr
    alone = _serve(relay, "--admin-host", "127.0.0.1")
    assert alone.returncode == 2
    assert alone.stderr == "relay: --admin-host needs --admin-port (or RELAY_ADMIN_LISTEN)\n"


@pytest.mark.parametrize(
    ("raw", "address"),
    [
        ("127.0.0.1:9000", ListenAddress("127.0.0.1", 9000)),
        ("0.0.0.0:9000", ListenAddress("0.0.0.0", 9000)),
        ("[::1]:9000", ListenAddress("::1", 9000)),
        ("relay-admin:0", ListenAddress("relay-admin", 0)),
        ("", None),
    ],
)
def test_admin_listen_setting(raw: str, address: ListenAddress | None) -> None:
    assert Settings.from_env({"RELAY_ADMIN_LISTEN": raw}).admin_listen == address


@pytest.mark.parametrize("raw", ["9000", ":9000", "::1:9000", "host:", "host:port", "h:70000"])
def test_admin_listen_setting_refuses_what_is_not_host_port(raw: str) -> None:
    with pytest.raises(ConfigError, match="RELAY_ADMIN_LISTEN must be host:port"):
        Settings.from_env({"RELAY_ADMIN_LISTEN": raw})


def test_admin_flags_win_over_the_variable() -> None:
    unset = Settings()
    env = Settings(admin_listen=ListenAddress("10.0.0.5", 9000))
    assert _with_admin_flags(unset, None, None).admin_listen is None
    assert _with_admin_flags(unset, None, 9100).admin_listen == ("127.0.0.1", 9100)
    assert _with_admin_flags(env, None, 9100).admin_listen == ("10.0.0.5", 9100)
    assert _with_admin_flags(env, "127.0.0.1", None).admin_listen == ("127.0.0.1", 9000)
    assert _with_admin_flags(env, "::1", 9100).admin_listen == ("::1", 9100)
    with pytest.raises(ConfigError):
        _with_admin_flags(unset, "127.0.0.1", None)


def test_openapi_says_which_listener_serves_which_path() -> None:
    description = document()["info"]["description"]
    assert "RELAY_ADMIN_LISTEN" in description
    for path in (*PUBLIC_PATHS, *PUBLIC_PREFIXES):
        assert f"`{path}" in description
    assert "admin listener serves every path" in description


@pytest.mark.postgres
@pytest.mark.slow
def test_workers_accept_on_both_listeners(tmp_path: Path) -> None:
    """`relay serve --workers 2` with the admin listener apart: whichever process accepts a
    connection, each port serves what it should; the flag wins over RELAY_ADMIN_LISTEN."""
    from tests.test_store_contract import fresh_schema

    admin_port, ignored_port = _free_port(), _free_port()
    with fresh_schema() as url:
        relay = RelayProcess(
            tmp_path,
            _free_port(),
            "--workers",
            "2",
            "--admin-port",
            str(admin_port),
            RELAY_DATABASE_URL=url,
            RELAY_ADMIN_LISTEN=f"127.0.0.1:{ignored_port}",
        )
        relay.admin_base = f"http://127.0.0.1:{admin_port}"
        relay.start()
        try:
            close = {"connection": "close"}  # new connections: both processes get some
            minted = httpx.post(
                f"{relay.admin_base}/v1/callback-urls",
                json={"provider": "evolink", "reusable": True},
                headers=TOKEN,
            ).json()["url"]
            for n in range(8):
                public = httpx.get(f"{relay.base}/v1/subscribers", headers=TOKEN | close)
                assert public.status_code == 404 and public.json() == NOT_FOUND
                admin = httpx.get(f"{relay.admin_base}/v1/subscribers", headers=TOKEN | close)
                assert admin.status_code == 200
                payload = EVOLINK_COMPLETED | {"id": f"task-unified-workers-{n}"}
                assert httpx.post(minted, json=payload, headers=close).status_code == 200
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{ignored_port}/healthz")
        finally:
            relay.stop()
