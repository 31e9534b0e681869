"""The relay's HTTP/1.1 protocol on raw sockets: a bounded request head, JSON for the errors
the protocol answers itself, nothing refused that is within bounds, and slow clients bounded in
time, connections and memory."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from service.body_budget import SMALL_BODY, BodyBudget
from service.http_protocol import BoundedHttpToolsProtocol
from service.request_head import MAX_HEAD_BYTES
from tests.conftest import EVOLINK_COMPLETED, RelayServer
from tests.test_store_contract import fresh_schema


def _connect(relay: RelayServer) -> socket.socket:
    host, port = relay.base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_answers(sock: socket.socket) -> bytes:
    """Everything the relay sends until it closes the connection (or goes quiet)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        pass
    return b"".join(chunks)


def _split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The next response on a kept-alive connection: its head, then its body (as long as its
    ``content-length`` says, however many segments it came in)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    status, headers, body = _split(data)
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, body
        body += chunk
    return status, headers, body


def _split_all(answers: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Responses sent one after another on a connection, each with its ``content-length``."""
    responses = []
    while answers:
        status, headers, rest = _split(answers)
        length = int(headers["content-length"])
        responses.append((status, headers, rest[:length]))
        answers = rest[length:]
    return responses


def test_an_endless_header_is_refused_with_431_and_the_connection_closed(
    relay_server: RelayServer,
) -> None:
    with _connect(relay_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: relay\r\nx-flood: ")
        sent = 0
        try:
            while sent < 50 * MAX_HEAD_BYTES:  # far past the bound: it must not all be kept
                sock.sendall(b"a" * 16384)
                sent += 16384
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the relay, as it should
        status, headers, body = _split(_read_answers(sock))
    assert status == 431
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "header_too_large"
    assert relay_server.client.get("/healthz").status_code == 200


def test_many_small_headers_past_the_bound_are_refused(relay_server: RelayServer) -> None:
    flood = b"".join(b"x-h%d: %d\r\n" % (n, n) for n in range(MAX_HEAD_BYTES // 10))
    with _connect(relay_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: relay\r\n" + flood + b"\r\n")
        status, _, body = _split(_read_answers(sock))
    assert status == 431 and json.loads(body)["error"]["code"] == "header_too_large"


def test_malformed_request_is_a_json_400(relay_server: RelayServer) -> None:
    with _connect(relay_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nbad header line without colon\r\n\r\n")
        status, headers, body = _split(_read_answers(sock))
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "malformed_request"


def test_heads_within_bounds_and_large_bodies_are_served(relay_server: RelayServer) -> None:
    """A body far larger than the head bound, sent with its head in one write, is accepted;
    two requests on one connection each just under the bound are both answered."""
    url = urlsplit(relay_server.mint(reusable=True))
    payload = copy.deepcopy(EVOLINK_COMPLETED)
    payload["id"] = "task-big-body"
    payload["prompt_echo"] = "p" * (4 * MAX_HEAD_BYTES)
    body = json.dumps(payload).encode()
    big_header = b"x-pad: " + b"b" * (MAX_HEAD_BYTES - 1024) + b"\r\n"
    request = (
        b"POST %s HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n%s\r\n" % (url.path.encode(), len(body), big_header)
    ) + body
    health = b"GET /healthz HTTP/1.1\r\nhost: relay\r\n" + big_header + b"connection: close\r\n\r\n"
    with _connect(relay_server) as sock:
        sock.sendall(request + health)
        answers = _read_answers(sock)
    (callback_status, _, callback), (health_status, _, _) = _split_all(answers)
    assert (callback_status, health_status) == (200, 200), answers[:300]
    (event,) = relay_server.events(task_id="task-big-body")
    assert json.loads(callback) == {"received": True, "event_id": event["id"], "duplicate": False}


# --- responses -----------------------------------------------------------------------------------


def test_responses_leave_without_waiting_for_acknowledgements() -> None:
    """Nagle's algorithm is off on every connection, whatever the event loop and however the
    listening socket was made (here as uvicorn makes it: protocol 0, which asyncio's loop does
    not switch it off for): a body written after its head leaves at once, not when the client
    acknowledges the head (up to 40 ms later)."""

    async def accepted_nodelay() -> int:
        loop = asyncio.get_running_loop()
        option: asyncio.Future[int] = loop.create_future()

        class Probe(BoundedHttpToolsProtocol):
            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                super().connection_made(transport)
                accepted = transport.get_extra_info("socket")
                option.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        config = Config(app=None, log_config=None, ws="none")  # as the relay runs
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening.bind(("127.0.0.1", 0))
        server = await loop.create_server(
            lambda: Probe(config=config, server_state=ServerState(), app_state={}), sock=listening
        )
        async with server:
            _, writer = await asyncio.open_connection(*listening.getsockname())
            value = await asyncio.wait_for(option, 10)
            writer.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0


def test_expect_100_continue_is_answered_before_the_body_is_sent(
    relay_server: RelayServer,
) -> None:
    """A client that waits for the interim ``100 Continue`` before sending its body gets it,
    then its answer."""
    url = urlsplit(relay_server.mint(reusable=True))
    payload = copy.deepcopy(EVOLINK_COMPLETED)
    payload["id"] = "task-expect-continue"
    body = json.dumps(payload).encode()
    with _connect(relay_server) as sock:
        sock.settimeout(5)
        sock.sendall(
            b"POST %s HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\n"
            b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % (url.path.encode(), len(body))
        )
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        sock.sendall(body)
        answer = b""
        while b'"received":true' not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK")


# --- slow clients ------------------------------------------------------------------------------


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """What the relay sent before closing the connection, and when it closed; fails if it is
    still open after ``seconds``."""
    sock.settimeout(seconds)
    started = time.monotonic()
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        raise AssertionError(f"the connection was still open after {seconds:g} s") from None
    return b"".join(chunks), time.monotonic() - started


def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout(
    relay_factory: Callable[..., RelayServer],
) -> None:
    relay = relay_factory(header_timeout=0.5)
    with _connect(relay) as sock:
        answer, took = _closed_within(sock, 5)
    assert answer == b""  # nothing was asked: nothing to answer
    assert took >= 0.4


def test_a_head_dripping_past_the_head_timeout_is_answered_408(
    relay_factory: Callable[..., RelayServer],
) -> None:
    relay = relay_factory(header_timeout=0.5)
    with _connect(relay) as sock:
        sock.sendall(b"POST /callbacks/evolink/x HTTP/1.1\r\nhost: relay\r\nx-drip: ")
        started = time.monotonic()
        try:
            while time.monotonic() - started < 5:  # a byte every 0.1 s: never idle, never done
                sock.sendall(b"a")
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer, _ = _closed_within(sock, 5)
    assert time.monotonic() - started < 4
    status, headers, body = _split(answer)
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_a_body_stalled_past_the_body_timeout_is_answered_408(
    relay_factory: Callable[..., RelayServer],
) -> None:
    relay = relay_factory(body_timeout=0.5)
    path = urlsplit(relay.mint(reusable=True)).path.encode()
    with _connect(relay) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nhost: relay\r\ncontent-length: 100\r\n\r\n{" % path)
        answer, took = _closed_within(sock, 5)
    status, _, body = _split(answer)
    assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
    assert 0.4 <= took < 4


def _callback_counts(relay: RelayServer, *outcomes: str) -> list[float]:
    """The evolink callback counters of ``outcomes`` (metrics are per process: other tests'
    relays count in them too, so a test compares them before and after)."""
    text = relay.client.get("/metrics", headers=relay.admin).text
    counts = []
    for outcome in outcomes:
        prefix = f'relay_callbacks_total{{outcome="{outcome}",provider="evolink"}} '
        found = [line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)]
        counts.append(float(found[0]) if found else 0.0)
    return counts


def test_a_body_timeout_is_logged_and_counted_as_the_408_it_was_answered(
    relay_factory: Callable[..., RelayServer], capfd: pytest.CaptureFixture[str]
) -> None:
    """The client got 408 from the protocol: the access line and the metrics (made from the
    same facts) say ``request_timeout`` too, not a 400 ``incomplete_body``."""
    relay = relay_factory(body_timeout=0.5)
    path = urlsplit(relay.mint(reusable=True)).path.encode()
    outcomes = ("request_timeout", "incomplete_body")
    before = _callback_counts(relay, *outcomes)
    with _connect(relay) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nhost: relay\r\ncontent-length: 100\r\n\r\n{" % path)
        answer, _ = _closed_within(sock, 5)
    assert _split(answer)[0] == 408
    deadline = time.monotonic() + 5
    while (after := _callback_counts(relay, *outcomes)) == before:  # counted once it is gone
        assert time.monotonic() < deadline, "the callback was not counted"
        time.sleep(0.05)
    assert [a - b for a, b in zip(after, before, strict=True)] == [1.0, 0.0]
    logged = ""
    while "path=/callbacks/evolink/" not in logged:  # written as the loop's iteration ends
        assert time.monotonic() < deadline, logged
        time.sleep(0.01)
        logged += capfd.readouterr().out
    (line,) = [line for line in logged.splitlines() if "path=/callbacks/evolink/" in line]
    assert "status=408" in line and "error_code=request_timeout" in line, line


def test_a_kept_alive_connection_gets_a_new_head_timeout_per_request(
    relay_factory: Callable[..., RelayServer],
) -> None:
    """Requests on one connection for longer than the head timeout are all served: the
    timeout counts from each request's first byte, not from the connection's opening."""
    relay = relay_factory(header_timeout=0.5)
    with _connect(relay) as sock:
        for _ in range(4):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: relay\r\n\r\n")
            assert _read_response(sock)[0] == 200
            time.sleep(0.3)


def test_past_the_connection_limit_the_longest_waiting_connection_makes_room(
    relay_factory: Callable[..., RelayServer],
) -> None:
    relay = relay_factory(max_connections=8)
    url = relay.mint(reusable=True)
    idle = [_connect(relay) for _ in range(8)]
    try:
        time.sleep(0.2)  # all eight accepted and waiting
        with httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            for n in range(3):  # each takes a waiting connection's place
                payload = {**EVOLINK_COMPLETED, "id": f"task-limit-{n}"}
                assert client.post(url, json=payload).status_code == 200
        answer, _ = _closed_within(idle[0], 5)  # the oldest went first
        assert answer == b""
    finally:
        for sock in idle:
            sock.close()


def test_bodies_past_the_memory_budget_are_refused_at_once_small_ones_still_served(
    relay_factory: Callable[..., RelayServer],
) -> None:
    """Large bodies may hold half the budget: a second 300 KiB one of a 1 MiB budget is
    refused 503 before it is sent, while a small callback still finds room."""
    relay = relay_factory(body_memory=1024 * 1024)
    path = urlsplit(relay.mint(reusable=True)).path.encode()
    head = b"POST %s HTTP/1.1\r\nhost: relay\r\ncontent-length: %d\r\n\r\n" % (path, 300 * 1024)
    with _connect(relay) as holding, _connect(relay) as refused:
        holding.sendall(head + b"{")  # holds 300 KiB of the budget while it stalls
        time.sleep(0.2)
        refused.sendall(head)
        answer, _ = _closed_within(refused, 5)
        status, headers, body = _split(answer)
        assert status == 503 and headers["retry-after"] == "1"
        assert headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "server_busy"
        payload = {**EVOLINK_COMPLETED, "id": "task-small-beside"}
        assert relay.post_callback(relay.mint(reusable=True), payload).status_code == 200


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The relay's store: its settings override (none for SQLite; a fresh PostgreSQL schema,
    dropped after the relay stopped: this fixture is set up before ``relay_factory``)."""
    if request.param == "sqlite":
        yield {}
        return
    with fresh_schema() as url:
        yield {"database_url": url}


def test_large_callbacks_are_committed_one_at_a_time_small_ones_pass_them(
    database: dict[str, str], relay_factory: Callable[..., RelayServer]
) -> None:
    """Received at once, four 300 KiB callbacks reach the store one after another (each
    commit made slow here), while a small callback sent meanwhile is answered before they
    are all done."""
    relay = relay_factory(**database)
    url = relay.mint(reusable=True)
    store = relay.relay.store
    real_ingest = store.ingest
    in_store = {"large": 0, "most": 0}
    first_large = threading.Event()

    async def slow_ingest(event: Any) -> Any:
        if len(event.raw_body) <= SMALL_BODY:
            return await real_ingest(event)
        in_store["large"] += 1
        in_store["most"] = max(in_store["most"], in_store["large"])
        first_large.set()
        try:
            await asyncio.sleep(0.4)
            return await real_ingest(event)
        finally:
            in_store["large"] -= 1

    store.ingest = slow_ingest
    finished: dict[str, float] = {}

    def post(name: str, padding: int) -> None:
        payload = {**EVOLINK_COMPLETED, "id": f"task-{name}", "padding": "p" * padding}
        with httpx.Client(timeout=30) as client:
            assert client.post(url, json=payload).status_code == 200
        finished[name] = time.monotonic()

    large = [threading.Thread(target=post, args=(f"large-{n}", 300 * 1024)) for n in range(4)]
    for thread in large:
        thread.start()
    assert first_large.wait(10)
    post("small", 0)
    for thread in large:
        thread.join(30)
    assert len(finished) == 5
    assert in_store["most"] == 1
    assert finished["small"] < max(finished[f"large-{n}"] for n in range(4))


def test_the_sign_in_form_is_read_with_a_small_limit(relay_server: RelayServer) -> None:
    """Anyone may post to /ops/sign-in: a form announcing 256 KiB is refused before a byte of
    it is read, and the connection closed."""
    with _connect(relay_server) as sock:
        sock.sendall(
            b"POST /ops/sign-in HTTP/1.1\r\nhost: relay\r\n"
            b"content-type: application/x-www-form-urlencoded\r\ncontent-length: 262144\r\n\r\n"
        )
        answer, _ = _closed_within(sock, 5)
    status, _, body = _split(answer)
    assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"


def test_console_forms_of_strangers_are_refused_without_reading_them(
    relay_server: RelayServer,
) -> None:
    with _connect(relay_server) as sock:
        sock.sendall(
            b"POST /ops/sign-out HTTP/1.1\r\nhost: relay\r\n"
            b"content-type: application/x-www-form-urlencoded\r\ncontent-length: 60000\r\n\r\n"
        )
        answer, _ = _closed_within(sock, 5)
    assert answer.startswith(b"HTTP/1.1 403")


def test_the_body_budget_keeps_half_for_small_bodies() -> None:
    budget = BodyBudget(1000 * 1024)
    assert budget.grow(0, 400 * 1024)
    assert not budget.grow(0, 200 * 1024)  # large bodies: at most half
    assert budget.grow(0, 60 * 1024)  # small ones: the rest
    assert budget.grow(60 * 1024, 100 * 1024) is True  # a chunked body turning large: fits
    assert not budget.grow(100 * 1024, 200 * 1024)  # 400 + 200 > 500 KiB of large
    budget.release(100 * 1024)
    budget.release(400 * 1024)
    assert (budget.used, budget.large) == (0, 0)
    assert budget.large_seen
