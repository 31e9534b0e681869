"""The network edge the relay does not own, played on loopback for tests.

* ``TinyServer``: a minimal HTTP/1.1 server on a loopback address that counts the connections
  it accepts; it answers ``200 ok`` or a redirect. A canary on 127.0.0.1 proves that nothing
  connected to a forbidden address (Linux routes all of 127/8 to ``lo``, so allowed test
  targets live on 127.0.0.2, 127.0.0.3...).
* ``HostileServer``: a subscriber that never answers, answers one byte at a time, or answers
  with a body of any size (streamed lazily, never allocated); it records how long each
  connection was held open and how many bytes it wrote.
* ``self_signed_tls``: a server's TLS context with a certificate nobody vouches for (pass it
  to ``TinyServer(tls=...)``).
* ``fake_dns``: ``socket.getaddrinfo`` answered from a table that a test may change at any time
  (DNS rebinding); ``loop.getaddrinfo`` and aiohttp's threaded resolver both end there.
* ``EdgeLoop``: an event loop in a thread, to run these servers beside synchronous test code.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

#: One chunk of zeros, allocated once: a huge body is this chunk written again and again.
_ZEROS = bytes(64 * 1024)


async def _read_request(reader: asyncio.StreamReader) -> None:
    """Read one request's head and (Content-Length) body, so closing never resets the peer."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            await reader.readexactly(int(value))


class TinyServer:
    """A minimal HTTP/1.1 server on a loopback address that counts the connections it accepts.

    Answers ``200 ok``, or ``status`` with ``Location: location`` when a location is given,
    and closes each connection after one answer. Speaks HTTPS with ``tls``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        location: str | None = None,
        status: int = 302,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.location = location
        self.status = status
        self.tls = tls
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client hung up: that is its right
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        if self.location is None:
            head = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
            body = b"ok"
        else:
            head = (
                f"HTTP/1.1 {self.status} Redirect\r\nLocation: {self.location}\r\n"
                "Content-Length: 0\r\n"
            )
            body = b""
        writer.write(f"{head}Connection: close\r\n\r\n".encode() + body)
        await writer.drain()

    async def __aenter__(self) -> TinyServer:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Hanging connections are ours to end (wait_closed waits for them on Python 3.12+).
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()


TinyServerT = TypeVar("TinyServerT", bound=TinyServer)


def self_signed_tls(directory: Path) -> ssl.SSLContext:
    """A server TLS context whose certificate (for ``localhost`` and 127.0.0.1, valid for an
    hour) signs itself: a client that verifies certificates refuses it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "self-signed.pem", directory / "self-signed.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


Behaviour = Literal["silent", "dribble-head", "dribble-body", "huge"]


class HostileServer(TinyServer):
    """A subscriber that misbehaves on purpose, on a loopback address.

    ``behaviour``:

    * ``silent``: reads the request and never writes a byte;
    * ``dribble-head``: writes its whole answer (status line included), one byte every
      ``interval`` seconds;
    * ``dribble-body``: writes the head of a ``status`` answer at once, then its body one byte
      every ``interval`` seconds;
    * ``huge``: a ``status`` answer with ``Content-Length: body_bytes``, zeros streamed as fast
      as the client reads them (the body is generated, never held in memory).

    ``held`` lists, per closed connection, the seconds from accept to the client hanging up;
    ``sent`` is the bytes written in all, ``sent_max`` on one connection.
    """

    def __init__(
        self,
        behaviour: Behaviour,
        host: str,
        *,
        status: int = 503,
        interval: float = 1.0,
        body_bytes: int = 1 << 30,
    ) -> None:
        super().__init__(host)
        self.behaviour = behaviour
        self.status = status
        self.interval = interval
        self.body_bytes = body_bytes
        self.held: list[float] = []
        self.sent = 0
        self.sent_max = 0

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted = time.monotonic()
        await _read_request(reader)
        talker = asyncio.create_task(self._talk(writer))
        try:
            # The client sends nothing more: the next read ends when it hangs up.
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        finally:
            self.held.append(time.monotonic() - accepted)
            talker.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await talker

    async def _write(self, writer: asyncio.StreamWriter, data: bytes, counter: list[int]) -> None:
        writer.write(data)
        counter[0] += len(data)
        self.sent += len(data)
        self.sent_max = max(self.sent_max, counter[0])
        await writer.drain()

    async def _talk(self, writer: asyncio.StreamWriter) -> None:
        written = [0]
        if self.behaviour == "silent":
            return
        if self.behaviour == "dribble-head":
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            for index in range(len(answer)):
                await self._write(writer, answer[index : index + 1], written)
                await asyncio.sleep(self.interval)
            return
        length = 3600 if self.behaviour == "dribble-body" else self.body_bytes
        head = (
            f"HTTP/1.1 {self.status} Hostile\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {length}\r\n\r\n"
        )
        await self._write(writer, head.encode(), written)
        left = length
        while left > 0:
            if self.behaviour == "dribble-body":
                await self._write(writer, b"x", written)
                left -= 1
                await asyncio.sleep(self.interval)
            else:
                chunk = _ZEROS if left >= len(_ZEROS) else _ZEROS[:left]
                await self._write(writer, chunk, written)
                left -= len(chunk)


class DnsTable(dict[str, Any]):
    """Names to addresses (a list of strings, or a callable giving one), plus what was asked.

    ``lookups`` lists every name looked up through the table, in order, answered or not.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lookups: list[str] = []


@contextlib.contextmanager
def fake_dns(*, fallback: bool = False) -> Iterator[DnsTable]:
    """Answer ``socket.getaddrinfo`` from a table instead of DNS while the block runs.

    A name missing from the table does not resolve, unless ``fallback``: then the real
    resolver answers it (IP literals and ``localhost`` keep working for the rest of the
    process). The table may be changed at any time, from any thread.
    """
    table = DnsTable()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else host
        answer = table.get(name)
        if answer is None:
            if fallback:
                return real(host, port, *args, **kwargs)
            table.lookups.append(name)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        table.lookups.append(name)
        if callable(answer):
            answer = answer()
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port or 0, 0, 0) if ":" in a else (a, port or 0),
            )
            for a in answer
        ]

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    try:
        yield table
    finally:
        socket.getaddrinfo = real


class EdgeLoop:
    """An event loop in a daemon thread hosting edge servers for synchronous code.

    Use as a context manager; servers started with ``serve`` are closed on exit.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._servers: list[TinyServer] = []

    def __enter__(self) -> EdgeLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in reversed(self._servers):
            with contextlib.suppress(Exception):
                self.run(server.__aexit__())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coroutine`` on the edge loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` on the edge loop (to read a server's counters between its writes)."""

        async def inside() -> T:
            return fn()

        return self.run(inside())

    def serve(self, server: TinyServerT) -> TinyServerT:
        """Start ``server`` on the edge loop; it is closed when the loop is."""
        self.run(server.__aenter__())
        self._servers.append(server)
        return server
