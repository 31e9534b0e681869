"""The public edge: Debian's nginx running deploy/nginx.conf in front of real relay processes.

TLS with a certificate from deploy/make-cert.sh, callbacks reaching a real subscriber, no
callback token in any log nginx wrote (whatever it was provoked into saying), nginx's own
errors in the relay's JSON shape, a relay's 503 passed on without the replicas being marked
down, and RELAY_TRUSTED_PROXIES letting a provider allowlist see the provider's address.
"""

from __future__ import annotations

import copy
import itertools
import json
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import EVOLINK_COMPLETED
from tests.nginx_process import NginxProcess, free_port, require_nginx
from tests.relay_process import RelayProcess
from tests.subscriber_server import SubscriberServer
from tests.test_store_contract import ThreadedProxy, fresh_schema


@pytest.fixture(autouse=True)
def _nginx_installed() -> None:
    require_nginx()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


@pytest.fixture
def started() -> Iterator[Callable[..., Any]]:
    """``started(thing)`` returns ``thing``, stopped at the end (``thing.<stop>()``, last
    first) whatever happens: relays, nginx, subscribers, database proxies."""
    running: list[Callable[[], None]] = []

    def keep(thing: Any, stop: str = "stop") -> Any:
        running.append(getattr(thing, stop))
        return thing

    yield keep
    for stop in reversed(running):
        stop()


def payload(n: int) -> dict[str, Any]:
    body = copy.deepcopy(EVOLINK_COMPLETED)
    body["id"] = f"task-unified-proxy-{n}"
    return body


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def edge_relay(tmp_path: Path, port: int, nginx: NginxProcess, **env: str) -> RelayProcess:
    """A relay on ``port`` set up as the deploy examples set it up behind the proxy: its public
    URL is the proxy's, the proxy is trusted, the admin surface is on a listener of its own."""
    return RelayProcess(
        tmp_path,
        port,
        **{
            "RELAY_PUBLIC_URL": nginx.base,
            "RELAY_TRUSTED_PROXIES": "127.0.0.1/32",
            "RELAY_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
            **env,
        },
    )


def mint(relay: RelayProcess, **body: Any) -> str:
    """A callback URL minted on the relay's admin listener (not behind nginx)."""
    answer = httpx.post(
        f"{relay.admin_base}/v1/callback-urls",
        json={"provider": "evolink", **body},
        headers=relay.admin,
        timeout=10,
    )
    assert answer.status_code in (200, 201), answer.text
    url: str = answer.json()["url"]
    return url


def subscribe(relay: RelayProcess, sink: SubscriberServer) -> None:
    answer = httpx.post(
        f"{relay.admin_base}/v1/subscribers",
        json={"url": sink.url},
        headers=relay.admin,
        timeout=10,
    ).json()
    sink.secrets.append(answer["secret"])


def assert_relay_error(response: httpx.Response, status: int, code: str) -> None:
    """``{"error": {"code", "message"}}`` as JSON, as the relay answers its own errors."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert set(error) == {"code", "message"}


def raw_tls(nginx: NginxProcess, data: bytes) -> None:
    """Send ``data`` over TLS and close without waiting for an answer (a client gone early)."""
    with socket.create_connection(("127.0.0.1", nginx.port), timeout=10) as sock:
        with nginx.tls().wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(data)


def provoke(nginx: NginxProcess, path: str, client: httpx.Client) -> int:
    """Requests on ``path`` that nginx itself refuses or gives up on, each of which its error
    log reports with the request line at info or error level; the access-log lines they add."""
    too_large = client.post(nginx.base + path, content=b"{" + b" " * (1024 * 1024 + 10) + b"}")
    assert_relay_error(too_large, 413, "payload_too_large")
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    raw_tls(nginx, head)  # closed while nginx reads the head
    raw_tls(nginx, head + b"Content-Length: 100\r\n\r\n{")  # closed while it reads the body
    # An invalid header line is logged (and ignored), then the request goes on to a relay.
    raw_tls(nginx, head + b"X@Bad: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    return 4


def tokens_in(text: str, tokens: list[str]) -> list[str]:
    """The tokens ``text`` shows: whole, their first 12 characters (a line cut short), or any
    long part of one (a token is ``<id>.<expiry>.<signature>``)."""

    def pieces(token: str) -> list[str]:
        return [token, token[:12], *(part for part in token.split(".") if len(part) >= 16)]

    return [t for t in tokens if any(piece in text for piece in pieces(t))]


@pytest.mark.postgres
@pytest.mark.slow
def test_callbacks_over_tls_reach_the_subscriber_and_no_log_holds_a_token(
    tmp_path: Path, pg_url: str, started: Callable[..., Any]
) -> None:
    """Through the real nginx, with its error log verbose (info) and every rejection it makes
    on its own (413, a client gone early, an invalid header, replicas down: 502) provoked on
    callback URLs: the callbacks arrive, and no log nginx wrote names a token."""
    sink = started(SubscriberServer().start())
    home = tmp_path / "nginx"
    port_1, port_2 = free_port(), free_port()
    nginx = NginxProcess(home, (f"127.0.0.1:{port_1}", f"127.0.0.1:{port_2}"))
    relays = [
        started(edge_relay(tmp_path, port, nginx, RELAY_DATABASE_URL=pg_url).start())
        for port in (port_1, port_2)
    ]
    started(nginx.start())
    subscribe(relays[0], sink)
    urls = [mint(relays[0]), mint(relays[1], reusable=True)]
    tokens = [url.rsplit("/", 1)[1] for url in urls]
    assert all(url.startswith(nginx.base + "/callbacks/evolink/") for url in urls)
    archive_token = uuid.uuid4().hex
    with httpx.Client(verify=nginx.tls(), timeout=30) as client:
        accepted = [client.post(url, json=payload(n)) for n, url in enumerate(urls)]
        assert [r.status_code for r in accepted] == [200, 200], [r.text for r in accepted]
        event_ids = {r.json()["event_id"] for r in accepted}
        assert wait_until(lambda: event_ids <= sink.accepted_ids(), timeout=30)
        assert client.get(f"{nginx.base}/archive/{archive_token}").status_code == 404

        expected = len(nginx.access_lines()) + provoke(nginx, urls[1][len(nginx.base) :], client)
        # One replica down: nginx logs the refused connection, then the other one answers.
        relays[1].kill()
        for n in range(2, 6):
            assert client.post(urls[1], json=payload(n)).status_code == 200
        relays[0].kill()  # and both: nginx answers 502 itself
        assert_relay_error(client.post(urls[1], json=payload(9)), 502, "bad_gateway")
        expected += 5
    # Every request is in the access log before it is read (nginx logs when a request ends).
    assert wait_until(lambda: len(nginx.access_lines()) >= expected, timeout=10)
    nginx.stop()
    logs = nginx.logs_written()
    assert set(logs) >= {"access.log", "error.log", "nginx.stderr"}
    statuses = [json.loads(line)["status"] for line in logs["access.log"].splitlines()]
    assert {200, 400, 404, 413, 502} <= set(statuses)
    for name, text in logs.items():
        assert not tokens_in(text, [*tokens, archive_token]), f"a token is in nginx's {name}"
    routes = {json.loads(line)["route"] for line in logs["access.log"].splitlines()}
    assert {"/callbacks/evolink/-", "/archive/-"} <= routes


def test_the_error_log_a_server_would_otherwise_write_holds_the_token(tmp_path: Path) -> None:
    """Why the public server's error log goes nowhere: the same provocations, with that
    server's error log written at info as nginx's default would, put the token in it (and
    show that the grep above finds a leak when there is one)."""
    leaky = tmp_path / "leaky"
    nginx = NginxProcess(
        leaky,
        (f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"),
        extra={"error_log /dev/null emerg;": f"error_log {leaky}/logs/server.log info;"},
    ).start()
    token = "leak" + uuid.uuid4().hex
    try:
        with httpx.Client(verify=nginx.tls(), timeout=30) as client:
            provoke(nginx, f"/callbacks/evolink/{token}", client)
            answer = client.post(f"{nginx.base}/callbacks/evolink/{token}", json={})
            assert_relay_error(answer, 502, "bad_gateway")
        assert wait_until(lambda: token in (nginx.logs / "server.log").read_text(), timeout=10)
    finally:
        nginx.stop()
    server_log = (nginx.logs / "server.log").read_text()
    assert f'request: "POST /callbacks/evolink/{token} HTTP/1.1"' in server_log
    assert f"/callbacks/evolink/{token}" in server_log.split("upstream:", 1)[1]
    assert not tokens_in(nginx.logs_written()["access.log"], [token])


@pytest.mark.slow
def test_nginx_answers_its_own_errors_in_the_relays_json_shape(
    tmp_path: Path, started: Callable[..., Any]
) -> None:
    """413 (too large), 502 (no relay reachable), 504 (a relay that never answers) and 404
    (everything but callbacks and archived outputs: no /v1, /ops, /metrics) are JSON."""
    refused = started(NginxProcess(tmp_path / "refused", (f"127.0.0.1:{free_port()}",) * 2)).start()
    # A listener that never accepts: the kernel completes the handshake, nobody answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    hung = started(NginxProcess(tmp_path / "hung", (address, address))).start()
    try:
        with httpx.Client(verify=refused.tls(), timeout=30) as client:
            callback = f"{refused.base}/callbacks/evolink/{uuid.uuid4().hex}"
            assert_relay_error(client.post(callback, json={}), 502, "bad_gateway")
            big = client.post(callback, content=b"x" * (2 * 1024 * 1024))
            assert_relay_error(big, 413, "payload_too_large")
            for path in ("/v1/subscribers", "/ops", "/metrics", "/openapi.json", "/"):
                assert_relay_error(client.get(refused.base + path), 404, "not_found")
        with httpx.Client(verify=hung.tls(), timeout=60) as client:
            asked = time.monotonic()
            answer = client.post(f"{hung.base}/callbacks/evolink/{uuid.uuid4().hex}", json={})
            assert_relay_error(answer, 504, "gateway_timeout")
            assert time.monotonic() - asked < 30  # proxy_read_timeout, not retried elsewhere
    finally:
        silent.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_relay_answering_503_is_not_marked_down(
    tmp_path: Path, pg_url: str, started: Callable[..., Any]
) -> None:
    """PostgreSQL away from one replica, then from both: the relays' 503 (nothing stored) is
    what the provider gets, never nginx's 502 for replicas it marked down; back, it is 200."""
    databases = [started(ThreadedProxy(pg_url), "close") for _ in range(2)]
    ports = (free_port(), free_port())
    nginx = NginxProcess(tmp_path / "nginx", (f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"))
    relays = [
        started(edge_relay(tmp_path, port, nginx, RELAY_DATABASE_URL=database.url).start())
        for port, database in zip(ports, databases, strict=True)
    ]
    started(nginx.start())
    url = mint(relays[0], reusable=True)

    numbers = itertools.count()

    def post_many(count: int) -> list[httpx.Response]:
        """``count`` callbacks (new tasks) at once."""
        with (
            httpx.Client(verify=nginx.tls(), timeout=30) as client,
            ThreadPoolExecutor(8) as pool,
        ):
            batch = [next(numbers) for _ in range(count)]
            return list(pool.map(lambda n: client.post(url, json=payload(n)), batch))

    assert {r.status_code for r in post_many(4)} == {200}

    databases[0].cut()
    answers = post_many(8)  # max_fails=2: a 503 counted as a failure would mark it down
    assert {r.status_code for r in answers} <= {200, 503}, [r.text for r in answers]
    for answer in answers:
        if answer.status_code == 503:
            assert_relay_error(answer, 503, "storage_unavailable")

    databases[1].cut()
    for answer in post_many(8):
        assert_relay_error(answer, 503, "storage_unavailable")

    for database in databases:
        database.restore()
    assert wait_until(lambda: {r.status_code for r in post_many(4)} == {200}, timeout=30)


def test_trusted_proxy_lets_a_provider_allowlist_work_behind_nginx(
    tmp_path: Path, started: Callable[..., Any]
) -> None:
    """RELAY_EVOLINK_ALLOWED_IPS sees the address nginx saw (X-Forwarded-For from a trusted
    proxy), and a client cannot claim an allowed address by sending the header itself."""
    port = free_port()
    nginx = NginxProcess(tmp_path / "nginx", (f"127.0.0.1:{port}",) * 2)
    relay = started(
        edge_relay(tmp_path, port, nginx, RELAY_EVOLINK_ALLOWED_IPS="127.0.0.5/32").start()
    )
    started(nginx.start())
    url = mint(relay, reusable=True)
    provider = httpx.HTTPTransport(verify=nginx.tls(), local_address="127.0.0.5")
    with httpx.Client(transport=provider, timeout=30) as client:
        assert client.post(url, json=payload(1)).status_code == 200
    with httpx.Client(verify=nginx.tls(), timeout=30) as client:
        forged = client.post(url, json=payload(2), headers={"x-forwarded-for": "127.0.0.5"})
        assert_relay_error(forged, 403, "source_not_allowed")
    # Straight to the relay from 127.0.0.1 (not through the proxy): refused as well.
    assert httpx.post(relay.base + url[len(nginx.base) :], json=payload(3)).status_code == 403


def test_make_cert_writes_a_pair_nginx_serves_for_the_names_given(tmp_path: Path) -> None:
    """deploy/make-cert.sh: a certificate for the names asked, a key readable by its owner."""
    nginx = NginxProcess(tmp_path / "nginx", ("127.0.0.1:9", "127.0.0.1:9"))
    key = nginx.cert.parent / "privkey.pem"
    assert key.stat().st_mode & 0o077 == 0
    nginx.start()
    try:
        context = nginx.tls()
        with socket.create_connection(("127.0.0.1", nginx.port), timeout=10) as sock:
            with context.wrap_socket(sock, server_hostname="localhost") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
        with pytest.raises(ssl.SSLCertVerificationError):
            with socket.create_connection(("127.0.0.1", nginx.port), timeout=10) as sock:
                context.wrap_socket(sock, server_hostname="relay.example.com")
    finally:
        nginx.stop()
