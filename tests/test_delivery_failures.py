"""Each way a delivery attempt can fail is recorded as what it was, against real sockets.

``Deliverer.attempt`` against loopback servers that refuse, reset, close, stall, answer
something that is not HTTP, do not speak TLS or show a self-signed certificate; a name that does
not resolve; and targets the policy refuses. The error text is what the attempt record, and so
the API, the CLI and the ops console, show.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from ipaddress import ip_network
from pathlib import Path

import pytest

from service.delivery import Attempt, Deliverer
from service.store.base import Claim
from service.targets import TargetPolicy
from tests.conftest import bound_socket
from tests.edge import TinyServer, fake_dns, self_signed_tls

pytestmark = pytest.mark.anyio

LOOPBACK = TargetPolicy(allowlist=(ip_network("127.0.0.0/8"),))
#: ``RELAY_ALLOW_PRIVATE_TARGETS=true``: names are looked up by the system's own resolver.
ANYWHERE = TargetPolicy(allow_private=True)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def claim(url: str) -> Claim:
    return Claim(
        delivery_id="dlv_1",
        event_id="evt_1",
        subscriber_id="sub_1",
        url=url,
        secrets=("whsec_" + "A" * 32,),
        body='{"id":"evt_1"}',
        cycle_attempts=0,
        trigger="scheduled",
    )


async def attempt(
    url: str, policy: TargetPolicy = LOOPBACK, delivery_timeout: float = 2.0
) -> Attempt:
    deliverer = Deliverer(policy, delivery_timeout)
    try:
        return await deliverer.attempt(claim(url))
    finally:
        await deliverer.aclose()


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    """A loopback server running ``handler`` for each connection; yields its port."""
    handlers: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def test_a_refused_connection_is_recorded_as_refused() -> None:
    closed = bound_socket()  # bound, never listening: connections are refused
    port = closed.getsockname()[1]
    try:
        result = await attempt(f"http://127.0.0.1:{port}/hook")
    finally:
        closed.close()
    assert result.status_code is None
    assert result.error == f"connection refused: 127.0.0.1:{port}"


async def test_a_refused_connection_to_a_name_is_recorded_as_refused_at_once() -> None:
    """A name (looked up for real) whose port is closed: refused, in well under the timeout;
    not a timeout, whichever of the name's addresses (127.0.0.1, ::1) was tried."""
    closed = bound_socket()
    port = closed.getsockname()[1]
    try:
        result = await attempt(f"https://localhost:{port}/hook", ANYWHERE, delivery_timeout=5.0)
    finally:
        closed.close()
    assert result.status_code is None
    assert result.error == f"connection refused: localhost:{port}"
    assert result.latency_ms < 1000


async def test_a_reset_connection_is_recorded_as_reset() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # linger 0: the close is a RST

    async with serving(reset) as port:
        result = await attempt(f"http://127.0.0.1:{port}/hook")
    assert result.status_code is None
    assert result.error is not None and result.error.startswith("connection reset"), result


async def test_a_connection_closed_without_an_answer_is_recorded_as_closed() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)

    async with serving(hang_up) as port:
        result = await attempt(f"http://127.0.0.1:{port}/hook")
    assert result.status_code is None
    assert result.error is not None and result.error.startswith("connection closed"), result


async def test_a_stalled_subscriber_is_recorded_as_a_timeout() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(30)

    async with serving(stall) as port:
        result = await attempt(f"http://127.0.0.1:{port}/hook", delivery_timeout=0.3)
    assert result.status_code is None
    assert result.error == "timed out after 0.3 s"
    assert 250 <= result.latency_ms < 2000


async def test_a_name_that_does_not_resolve_is_recorded_as_dns() -> None:
    def not_found() -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with fake_dns(fallback=True) as table:
        table["gone.example"] = not_found
        result = await attempt("http://gone.example:8080/hook")
    assert table.lookups == ["gone.example"]
    assert result.status_code is None
    assert result.error == "DNS lookup failed: gone.example: Name or service not known"


async def test_a_reserved_name_is_recorded_as_a_dns_failure() -> None:
    """A name under ``.invalid`` (RFC 6761: never resolves) through the system's resolver."""
    result = await attempt("https://subscriber.invalid/hook", ANYWHERE)
    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("DNS lookup failed: subscriber.invalid: "), result


async def test_a_self_signed_certificate_is_recorded_as_rejected(tmp_path: Path) -> None:
    """The TLS error says it was the certificate, and why it was not trusted."""
    async with TinyServer(tls=self_signed_tls(tmp_path)) as server:
        by_name = await attempt(f"https://localhost:{server.port}/hook", ANYWHERE)
        by_address = await attempt(server.url)
    assert (by_name.status_code, by_address.status_code) == (None, None)
    why = "certificate verify failed: self-signed certificate"
    assert by_name.error == f"TLS certificate rejected: localhost:{server.port}: {why}"
    assert by_address.error == f"TLS certificate rejected: 127.0.0.1:{server.port}: {why}"


async def test_a_server_not_speaking_tls_is_recorded_as_a_tls_failure() -> None:
    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the TLS client hello
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with serving(plain_http) as port:
        result = await attempt(f"https://127.0.0.1:{port}/hook")
    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith(f"TLS handshake failed: 127.0.0.1:{port}: "), result


async def test_an_answer_that_is_not_http_is_recorded_as_invalid() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HELLO there\r\n\r\n")
        await writer.drain()

    async with serving(garbage) as port:
        result = await attempt(f"http://127.0.0.1:{port}/hook")
    assert result.status_code is None
    assert result.error is not None and result.error.startswith("invalid answer: "), result
    assert "\n" not in result.error


async def test_refused_targets_are_recorded_as_not_allowed_without_connecting() -> None:
    async with TinyServer() as server:
        by_name = await attempt(f"http://localhost:{server.port}/hook", TargetPolicy())
        by_address = await attempt(f"http://127.0.0.1:{server.port}/hook", TargetPolicy())
        assert server.connections == 0
    assert by_name.error is not None and by_address.error is not None
    assert by_name.error.startswith("target not allowed: localhost resolves to no allowed")
    assert by_address.error == "target not allowed: 127.0.0.1 is a loopback address"


async def test_a_delivered_attempt_keeps_the_status_and_the_start_of_the_answer() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        body = b"x" * 5000
        writer.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 5000\r\n\r\n" + body)
        await writer.drain()

    async with serving(answer) as port:
        result = await attempt(f"http://127.0.0.1:{port}/hook")
    assert (result.status_code, result.error) == (503, None)
    assert result.response_excerpt == "x" * 1024
