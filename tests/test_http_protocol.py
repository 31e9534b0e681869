"""The relay's HTTP/1.1 protocol on raw sockets: a bounded request head, JSON for the errors
the protocol answers itself, and nothing refused that is within bounds."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from uvicorn.config import Config
from uvicorn.server import ServerState

from service.http_protocol import MAX_HEAD_BYTES, BoundedHttpToolsProtocol
from tests.conftest import EVOLINK_COMPLETED, RelayServer


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
    url = urlsplit(relay_server.mint())
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
    assert answers.count(b"HTTP/1.1 200") == 2, answers[:300]
    assert b'"accepted"' in answers or b'"event_id"' in answers
    assert relay_server.events(task_id="task-big-body")


# --- one write per response ------------------------------------------------------------------


class _RecordingTransport:
    """Stands in for uvloop's socket transport (the edge): records what is written."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _serve(request: bytes, *messages: dict[str, Any]) -> tuple[list[int], list[bytes]]:
    """The relay's HTTP protocol on a recording transport answers ``request`` with an app
    that sends ``messages``: (socket writes made when the response had started, every write,
    one entry per ``send`` system call)."""
    transport = _RecordingTransport()
    at_start: list[int] = []

    async def app(_scope: Any, receive: Any, send: Any) -> None:
        await receive()
        for message in messages:
            await send(message)
            if message["type"] == "http.response.start":
                at_start.append(len(transport.writes))

    async def serve() -> None:
        config = Config(app, log_config=None)
        config.load()
        protocol = BoundedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(request)
        for _ in range(100):
            await asyncio.sleep(0.001)
            if protocol.cycle is not None and protocol.cycle.response_complete:
                return

    asyncio.run(serve())
    return at_start, transport.writes


_POST = b"POST / HTTP/1.1\r\nhost: relay\r\ncontent-length: 2\r\n\r\nhi"


def _start(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http.response.start", "status": 200, "headers": headers}


def _body(body: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": body, "more_body": more}


def test_a_response_with_its_length_leaves_in_one_write() -> None:
    at_start, writes = _serve(_POST, _start([(b"content-length", b"11")]), _body(b"hello world"))
    assert at_start == [0]  # the head waited for its body
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[0].endswith(b"\r\n\r\nhello world")


def test_streams_head_requests_and_empty_bodies_show_their_head_at_once() -> None:
    at_start, writes = _serve(_POST, _start([]), _body(b"a", more=True), _body(b"b"))
    assert at_start == [1] and b"transfer-encoding: chunked" in writes[0]  # no length: chunked
    assert writes[1:] == [b"1\r\na\r\n", b"1\r\nb\r\n0\r\n\r\n"]

    head = b"HEAD / HTTP/1.1\r\nhost: relay\r\n\r\n"
    at_start, writes = _serve(head, _start([(b"content-length", b"5")]), _body(b""))
    assert at_start == [1] and len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200 OK")

    at_start, writes = _serve(_POST, _start([(b"content-length", b"0")]), _body(b""))
    assert at_start == [1] and writes[0].endswith(b"\r\n\r\n")


def test_expect_100_continue_is_answered_before_the_body_is_sent(
    relay_server: RelayServer,
) -> None:
    """The interim ``100 Continue`` is not held back like a response head: a client that waits
    for it before sending its body gets it, then its answer."""
    url = urlsplit(relay_server.mint())
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
