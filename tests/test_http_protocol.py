"""The relay's HTTP/1.1 protocol on raw sockets: a bounded request head, JSON for the errors
the protocol answers itself, and nothing refused that is within bounds."""

from __future__ import annotations

import copy
import json
import socket
from urllib.parse import urlsplit

from service.http_protocol import MAX_HEAD_BYTES
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
