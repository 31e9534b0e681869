"""The HTTP/1.1 protocol the relay serves with: uvicorn's httptools protocol, with a bounded
request head, bounded slow clients and JSON for the errors it answers itself.

A head over ``service.request_head.MAX_HEAD_BYTES`` is answered ``431 header_too_large`` and
the connection closed; a request httptools cannot parse is ``400 malformed_request``. Both
bodies are the relay's usual ``{"error": {code, message}}``. Selected through
``service.app.uvicorn_options`` (``http=``), so the CLI, tests and benchmarks all use it.

Slow clients are bounded too (``ConnectionLimits``, from ``RELAY_HEADER_TIMEOUT``,
``RELAY_BODY_TIMEOUT`` and ``RELAY_MAX_CONNECTIONS``):

* a request head must be complete within the head timeout of the connection's opening (first
  request) or of its first byte (later requests; between requests uvicorn's keep-alive timeout
  applies). Past it, a connection that sent part of a head is answered ``408 request_timeout``
  and closed; one that sent nothing is closed;
* a body must be complete within the body timeout of its head (counted while the relay reads:
  not while it has paused reading, e.g. behind a pipelined request). Past it: ``408
  request_timeout`` if nothing was answered yet, and the connection is closed either way;
* when a new connection would exceed the connection limit, the connection that has kept the
  relay waiting longest (sending nothing, a head, a body, or idle between requests) is closed
  to make room (``503 too_many_connections`` if it had sent part of a request); connections
  whose request the relay is working on are never chosen. File descriptors are what runs out
  first: the default limit is half the process's open-file limit, the rest being left for
  deliveries, the store and logs.

All of it costs one timer handle per connection, re-armed lazily: a request only notes its
deadline; the timer, when it fires early, sets itself again for the current deadline.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import weakref
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.request_head import TOO_LARGE, HeadSize
from service.settings import Settings

log = structlog.get_logger("service.http_protocol")

#: The scope key set (to the 408's message) when a request's body timed out: the app, which
#: then sees the client disconnect, logs and counts it as the 408 the client was answered.
BODY_TIMED_OUT = "relay.body_timed_out"

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take to send a request, and how many connections it may hold."""

    #: Seconds from a connection's opening (or a later request's first byte) to its full head.
    header_timeout: float = 5.0
    #: Seconds from a request's head to the end of its body.
    body_timeout: float = 10.0
    #: Connections held at once; a new one past it takes the slot of the longest waiting.
    max_connections: int = 512

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The settings' limits; no ``max_connections`` set means half the open-file limit."""
        max_connections = settings.max_connections
        if max_connections is None:
            soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            max_connections = max(16, soft // 2) if soft != resource.RLIM_INFINITY else 65_536
        return cls(settings.header_timeout, settings.body_timeout, max_connections)


class _Tally:
    """A warning that may come thousands of times a second under attack: logged at once the
    first time, then at most once a second with how many happened (``count``), so that the
    log says what happened without becoming the attack's amplifier."""

    def __init__(self, event: str) -> None:
        self.event = event
        self.count = 0
        self.fields: dict[str, Any] = {}
        self.pending: asyncio.TimerHandle | None = None

    def add(self, loop: asyncio.AbstractEventLoop, **fields: Any) -> None:
        self.count += 1
        self.fields = fields
        if self.pending is None:
            self.flush()
            self.pending = loop.call_later(1.0, self.flush)

    def flush(self) -> None:
        self.pending = None
        if self.count:
            log.warning(self.event, count=self.count, **self.fields)
            self.count = 0


_TIMEOUTS = _Tally("request_timeout")
_EVICTIONS = _Tally("connection_limit")

#: Per server: its connections that are waiting for their client, longest waiting first (a
#: dict keeps insertion order; a connection leaves it while the relay works on its request).
_WAITING: weakref.WeakKeyDictionary[ServerState, dict[BoundedHttpToolsProtocol, None]] = (
    weakref.WeakKeyDictionary()
)


def _send_without_delay(transport: asyncio.Transport) -> None:
    """Switch Nagle's algorithm off for a TCP connection (``TCP_NODELAY``).

    uvicorn writes a response's head, then its body: with Nagle's algorithm, the body waits
    until the client acknowledges the head, and clients delay acknowledgements by up to 40 ms,
    so each response on a kept-alive connection would take that long. uvloop sets the option on
    every TCP connection; asyncio's own loop only on sockets created for protocol
    ``IPPROTO_TCP``, which uvicorn's listening socket is not (it leaves the protocol 0).
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses request heads over the bound
    (``service.request_head``) and bounds slow clients by ``limits`` (see the module's
    docstring)."""

    def __init__(
        self, *args: Any, limits: ConnectionLimits = ConnectionLimits(), **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._in_head = True
        self._head = HeadSize()
        #: What the relay waits for from the client ("head", "body"), None when nothing (its
        #: turn, or idle between requests under uvicorn's keep-alive timeout); until when.
        self._phase: str | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._waiting = _WAITING.setdefault(self.server_state, {})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _send_without_delay(transport)
        self._waiting[self] = None
        self._expect("head", self._limits.header_timeout)
        if len(self.connections) > self._limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._waiting.pop(self, None)
        self._phase = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != "head":  # a first request's head counts from the connection's start
            self._expect("head", self._limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head.add_received(len(data))
        super().data_received(data)
        if self._in_head and self._head.received_too_much() and not self.transport.is_closing():
            self._refuse(*TOO_LARGE)

    def on_url(self, url: bytes) -> None:
        self._head.add_parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head.add_parsed(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._expect("body", self._limits.body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head.reset()
        self._phase = None  # the relay's turn: its answer is not the client's to hurry
        self._waiting.pop(self, None)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._phase is None and not self.transport.is_closing():
            self._waiting[self] = None  # idle until the next request: waiting again

    def _expect(self, phase: str, seconds: float) -> None:
        """Wait for ``phase`` at most ``seconds``: one timer per connection, armed anew only
        when none is or it is due too late (one due earlier re-arms itself when it fires)."""
        self._phase = phase
        self._deadline = self.loop.time() + seconds
        if self._timer is None or self._timer.when() > self._deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._phase is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if self._phase == "body" and self.flow.read_paused:
            # The relay is not reading (a pipelined request waits its turn): not the client's
            # time; the body's full timeout starts again once reading resumes.
            self._deadline = now + self._limits.body_timeout
        if now < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        timeout = (
            self._limits.header_timeout if self._phase == "head" else self._limits.body_timeout
        )
        _TIMEOUTS.add(self.loop, part=self._phase, client=self._peer(), seconds=timeout)
        message = f"The request {self._phase} took over {timeout:g} s to arrive."
        if self._phase == "body" and self.cycle is not None:
            self.cycle.scope[BODY_TIMED_OUT] = message  # type: ignore[literal-required]
        self._close_waiting(408, "request_timeout", message)

    def _make_room(self) -> None:
        """Close the connection that has waited longest for its client (maybe this one)."""
        oldest = next(iter(self._waiting))
        _EVICTIONS.add(
            self.loop,
            max_connections=self._limits.max_connections,
            closed=oldest._peer(),
            waiting_for=oldest._phase or "next request",
        )
        oldest._close_waiting(
            503, "too_many_connections", "The relay holds too many connections; retry."
        )

    def _close_waiting(self, status: int, code: str, message: str) -> None:
        """Close a connection waiting for its client, answering ``status`` if part of a
        request came and nothing was answered yet (a silent or idle one is just closed)."""
        started = (self._phase == "head" and self._head.received > 0) or (
            self._phase == "body" and self.cycle is not None and not self.cycle.response_started
        )
        self._phase = None
        self._waiting.pop(self, None)
        if started:
            self._refuse(status, code, message)
        else:
            self.transport.close()

    def _peer(self) -> str | None:
        return self.client[0] if self.client else None

    def send_400_response(self, msg: str) -> None:
        if self._head.too_large:
            self._refuse(*TOO_LARGE)
        else:
            self._refuse(400, "malformed_request", f"{msg} The request is not valid HTTP/1.1.")

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
