"""A provider's CDN, emulated on loopback: the files an archiver downloads, and their faults.

``CdnEmulator`` is a real uvicorn server in a thread. Each file is added by path, with its bytes
or only its size; a sized file's bytes are pseudo-random, derived from its path, and made on the
fly in 64 KiB chunks (a 500 MiB file never sits in memory), so ``expected_sha256`` and
``expected_bytes`` stream the same generator. Per file, what a real CDN may do to a download:

    content_type=None    no Content-Type header (the client has to sniff; ``prefix`` gives a
                         sized file its magic bytes)
    slow / duration      seconds between chunks / for the whole body
    expire(path)         404 from then on (``forget`` is the same)
    drop_after=N         the connection is closed after N bytes of the body although
                         Content-Length announced them all (``drop_times``: only that many
                         answers are cut); the client sees the body end early
    redirect_to=URL      302 with that Location
    content_length=False no Content-Length: the body is chunked
    fail_first=N         503 to the first N requests, then the file
    ranges=True          a single ``Range: bytes=a-b`` is answered 206 (416 if unsatisfiable)

GET and HEAD are served; every request is recorded (``requests(path)``), unknown paths too.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import quote

import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tests.conftest import ServerThread, bound_socket

CHUNK = 64 * 1024
#: The scope extension under which each request carries its connection's transport.
TRANSPORT = "tests.cdn.transport"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass
class CdnRequest:
    """One request as the CDN saw and answered it."""

    at: float
    method: str
    range: str | None
    headers: dict[str, str]
    #: Each field is set before the client can see what it records (no race with a test that
    #: reads it as soon as its download ends); ``status`` is 0 until the answer starts.
    status: int = 0
    #: Bytes of the body handed to the connection.
    sent: int = 0
    #: Whether the whole body was sent (False: dropped, or the client went away).
    complete: bool = False


@dataclass
class CdnFile:
    path: str
    size: int
    body: bytes | None = None
    prefix: bytes = b""
    content_type: str | None = "image/png"
    slow: float = 0.0
    duration: float | None = None
    drop_after: int | None = None
    drop_times: int | None = None
    redirect_to: str | None = None
    content_length: bool = True
    fail_first: int = 0
    ranges: bool = True
    expired: bool = False
    #: Requests answered so far (``fail_first`` counts them), answers cut short so far.
    answered: int = 0
    dropped: int = 0
    sha256: str | None = None

    def block(self, index: int) -> bytes:
        """The ``index``-th 64 KiB of the file (shorter at its end)."""
        start = index * CHUNK
        if self.body is not None:
            return self.body[start : start + CHUNK]
        length = min(CHUNK, self.size - start)
        data = hashlib.shake_128(f"{self.path}:{index}".encode()).digest(length)
        if start < len(self.prefix):
            overlay = self.prefix[start : start + length]
            data = overlay + data[len(overlay) :]
        return data

    def read(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive), in chunks of at most 64 KiB."""
        for index in range(start // CHUNK, (end + CHUNK - 1) // CHUNK):
            base = index * CHUNK
            yield self.block(index)[max(start - base, 0) : end - base]

    def interval(self, chunks: int) -> float:
        """Seconds from one chunk to the next."""
        if self.duration is not None:
            return self.duration / max(chunks - 1, 1)
        return self.slow


class _CdnProtocol(HttpToolsProtocol):
    """uvicorn's protocol, which also hands each request its connection's transport: ASGI has no
    way to drop a connection, and a CDN that cuts a body short does exactly that."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Without Nagle's delay: a small last chunk would otherwise wait for the client's ACK.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {TRANSPORT: {"transport": self.transport}}


class CdnEmulator:
    """Serves added files at ``base``; ``with CdnEmulator() as cdn:`` or the ``cdn`` fixture."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._files: dict[str, CdnFile] = {}
        self._requests: dict[str, list[CdnRequest]] = {}
        self._lock = threading.Lock()
        self._thread = ServerThread(self, bound_socket(host))
        self._thread.server = uvicorn.Server(
            uvicorn.Config(
                self,
                lifespan="off",
                http=_CdnProtocol,
                ws="none",  # serves no WebSocket (and older uvicorns warn loading one)
                log_config=None,
                access_log=False,
                server_header=False,
            )
        )

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self._thread.port}"

    def start(self) -> CdnEmulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        # Downloads still running (a slow file, a client that stopped reading) would hold
        # uvicorn's graceful shutdown: their connections are cut first.
        loop = self._thread.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._abort_connections)
        self._thread.stop()

    def _abort_connections(self) -> None:
        for connection in list(self._thread.server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()

    def __enter__(self) -> CdnEmulator:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- files

    def add(
        self,
        path: str,
        body: bytes | None = None,
        *,
        size: int | None = None,
        content_type: str | None = "image/png",
        prefix: bytes = b"",
        slow: float = 0.0,
        duration: float | None = None,
        drop_after: int | None = None,
        drop_times: int | None = None,
        redirect_to: str | None = None,
        content_length: bool = True,
        fail_first: int = 0,
        ranges: bool = True,
    ) -> str:
        """Serve a file at ``path`` (``/...``) and return its URL.

        ``body`` is served as is; ``size`` alone serves that many pseudo-random bytes, the first
        ones ``prefix``; a ``redirect_to`` file needs neither. Adding a path again replaces it.
        """
        if not path.startswith("/"):
            raise ValueError(f"a path starts with '/': {path!r}")
        if body is not None and size is not None and size != len(body):
            raise ValueError("size and body disagree")
        if body is None and size is None and redirect_to is None:
            raise ValueError("a file needs a body, a size or redirect_to")
        if len(prefix) > (size or 0) and body is None and redirect_to is None:
            raise ValueError("prefix longer than the file")
        file = CdnFile(
            path=path,
            size=len(body) if body is not None else size or 0,
            body=body,
            prefix=prefix,
            content_type=content_type,
            slow=slow,
            duration=duration,
            drop_after=drop_after,
            drop_times=drop_times,
            redirect_to=redirect_to,
            content_length=content_length,
            fail_first=fail_first,
            ranges=ranges,
        )
        with self._lock:
            self._files[path] = file
        return self.url(path)

    def url(self, path: str) -> str:
        return f"{self.base}{quote(path)}"

    def expire(self, path: str) -> None:
        """The file is gone: 404 from now on, as a provider's CDN answers once it expired."""
        with self._lock:
            self._files[path].expired = True

    forget = expire

    def file(self, path: str) -> CdnFile:
        """The file served at ``path``, whose knobs a test may change while it runs."""
        with self._lock:
            return self._files[path]

    def expected_bytes(self, path: str) -> bytes:
        file = self.file(path)
        return b"".join(file.read(0, file.size))

    def expected_sha256(self, path: str) -> str:
        """The file's SHA-256 (hex), computed by streaming its chunks once."""
        file = self.file(path)
        if file.sha256 is None:
            digest = hashlib.sha256()
            for chunk in file.read(0, file.size):
                digest.update(chunk)
            file.sha256 = digest.hexdigest()
        return file.sha256

    def requests(self, path: str) -> list[CdnRequest]:
        """The requests for ``path`` so far, oldest first."""
        with self._lock:
            return list(self._requests.get(path, []))

    # -- the ASGI application

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        path: str = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        record = CdnRequest(time.time(), scope["method"], headers.get("range"), headers)
        with self._lock:
            self._requests.setdefault(path, []).append(record)
            file = self._files.get(path)
            number = -1
            if file is not None and not file.expired:
                number = file.answered
                file.answered += 1
        if file is None or number < 0:
            await _answer(send, record, 404, b"not found")
        elif scope["method"] not in ("GET", "HEAD"):
            await _answer(send, record, 405, b"method not allowed")
        elif number < file.fail_first:
            await _answer(send, record, 503, b"try again later")
        elif file.redirect_to is not None:
            location = [(b"location", file.redirect_to.encode())]
            await _answer(send, record, 302, b"", location)
        else:
            await self._serve(scope, receive, send, file, record)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, file: CdnFile, record: CdnRequest
    ) -> None:
        start, end, status = 0, file.size, 200
        headers: list[tuple[bytes, bytes]] = []
        if file.ranges:
            headers.append((b"accept-ranges", b"bytes"))
            if record.range is not None:
                wanted = _parse_range(record.range, file.size)
                if wanted is None:
                    unsatisfiable = [(b"content-range", f"bytes */{file.size}".encode())]
                    await _answer(send, record, 416, b"", unsatisfiable)
                    return
                (start, end), status = wanted, 206
                headers.append((b"content-range", f"bytes {start}-{end - 1}/{file.size}".encode()))
        if file.content_type is not None:
            headers.append((b"content-type", file.content_type.encode()))
        if file.content_length:
            headers.append((b"content-length", str(end - start).encode()))
        record.status = status
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if scope["method"] == "HEAD":
            record.complete = True
            await send({"type": "http.response.body", "body": b""})
            return

        cut: int | None = None
        with self._lock:
            if file.drop_after is not None and file.drop_after < end - start:
                if file.drop_times is None or file.dropped < file.drop_times:
                    file.dropped += 1
                    cut = file.drop_after
        transport: asyncio.Transport = scope["extensions"][TRANSPORT]["transport"]
        interval = file.interval((end - start + CHUNK - 1) // CHUNK)
        began = time.monotonic()
        for index, chunk in enumerate(file.read(start, end)):
            if index and interval:
                await _sleep_until(began + index * interval, transport)
            if transport.is_closing():  # the client went away, or the emulator stops
                return
            if cut is not None and record.sent + len(chunk) >= cut:
                chunk, record.sent = chunk[: cut - record.sent], cut
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await _drop(transport, receive)
                return
            record.sent += len(chunk)
            record.complete = record.sent == end - start  # the client may have it all at once
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        record.complete = True
        await send({"type": "http.response.body", "body": b""})


async def _answer(
    send: Send,
    record: CdnRequest,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    record.status, record.sent, record.complete = status, len(body), True
    headers = [*(headers or []), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drop(transport: asyncio.Transport, receive: Receive) -> None:
    """Close the connection mid-body: what was written is flushed, then the TCP connection ends
    (FIN) short of the announced length. The request returns once uvicorn saw the connection
    lost, so it takes the unfinished response for the client's doing and logs no error."""
    transport.close()
    while (await receive())["type"] != "http.disconnect":
        pass


async def _sleep_until(moment: float, transport: asyncio.Transport) -> None:
    """Wait until ``moment`` (``time.monotonic``), in short steps so a closed connection is
    noticed soon."""
    while not transport.is_closing():
        left = moment - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.05))


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """A single ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` range as (start, end exclusive);
    None if it cannot be satisfied (or is of another form)."""
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        start, end = max(size - int(last), 0), size
    else:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    if start >= end:
        return None
    return start, end
