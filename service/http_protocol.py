"""The HTTP/1.1 protocol the relay serves with: uvicorn's httptools protocol, with a bounded
request head and JSON for the errors it answers itself.

httptools keeps every byte of a request line and headers until the head is complete, with
no limit of its own, so a client sending an endless header could make the process grow
without bound. Here a head (request line and headers) over ``MAX_HEAD_BYTES`` is answered
``431 header_too_large`` and the connection closed; a request httptools cannot parse is
``400 malformed_request``. Both bodies are the relay's usual ``{"error": {code, message}}``.
Selected through ``UVICORN_OPTIONS`` (``http=``), so the CLI, tests and benchmarks all use it.

A response that declares its length leaves in one write (``_OneWriteResponse``): uvicorn
writes the head when the app starts the response and the body when it comes, two ``send``
system calls, each running the TCP stack and waking the client, where one does. Measured under
load: 4-5 us less kernel time per callback, about 5 % of its whole cost.
"""

from __future__ import annotations

from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: The largest request head accepted (nginx's default buffers allow 32 KiB of headers).
MAX_HEAD_BYTES = 64 * 1024

_REASONS = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops and uvicorn calls send_400_response."""


class _OneWriteResponse:
    """The transport as one request's cycle sees it: a response head that announces a body
    (``content-length`` over 0, not a HEAD request) is held until the body's first write and
    leaves with it in one ``send``. Everything else passes straight through: a ``100 Continue``
    (written before the response starts), chunked heads (a stream shows its head at once),
    later body chunks, and every other transport call.

    The cycle is let go once its head is seen: the cycle holds this object, so keeping it
    would make each request's objects a reference cycle, freed by the collector rather than
    at once (measured: more CPU than the saved system call).
    """

    __slots__ = ("_cycle", "_head", "_transport")

    def __init__(self, transport: Any, cycle: Any) -> None:
        self._transport = transport
        self._cycle = cycle  # until the head is seen
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif self._cycle is not None and self._cycle.response_started:
            cycle, self._cycle = self._cycle, None
            if (
                cycle.chunked_encoding is False
                and cycle.expected_content_length > 0
                and cycle.scope["method"] != "HEAD"
            ):
                self._head = data
                return
        self._transport.write(data)

    def close(self) -> None:
        # An app that fails between head and body: the head goes out, as it would have.
        if self._head is not None:
            data, self._head = self._head, None
            self._transport.write(data)
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses request heads over ``MAX_HEAD_BYTES``.

    Two counts: the bytes received while a head is incomplete (what httptools is holding,
    checked after each chunk), and the head's parsed size (URL and headers, checked as each
    header arrives), so a head is refused whether it trickles in or comes in one piece.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._received = 0
        self._parsed = 0
        self._too_large = False

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._received += len(data)
        super().data_received(data)
        # Counted before parsing, judged after: a chunk that also carries the end of the head
        # (and the start of the body) is not held against it.
        if self._in_head and self._received > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._refuse_head()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # a new cycle (no upgrade)
            cycle.transport = _OneWriteResponse(self.transport, cycle)  # see the class

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._received = self._parsed = 0

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse_head()
        else:
            self._refuse(400, "malformed_request", f"{msg} The request is not valid HTTP/1.1.")

    def _count(self, size: int) -> None:
        self._parsed += size
        if self._parsed > MAX_HEAD_BYTES:
            self._too_large = True
            raise _HeadTooLarge

    def _refuse_head(self) -> None:
        self._refuse(
            431,
            "header_too_large",
            f"The request line and headers are over {MAX_HEAD_BYTES} bytes.",
        )

    def _refuse(self, status: int, code: str, message: str) -> None:
        body = orjson.dumps({"error": {"code": code, "message": message}})
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        for name, value in self.server_state.default_headers:
            head.append(b"%s: %s\r\n" % (name, value))
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()
