"""The subscriber for ``bench/delivery`` and ``bench/e2e``: a minimal, fast HTTP/1.1 server.

A raw asyncio protocol (uvloop + httptools, no framework) that answers every POST outside
``/_sink/`` with ``--status`` (204 by default, no body), keeping connections alive. For each
such request it records the wall-clock time (``time.time()``, comparable across processes on
one machine) at which the request was complete, and its ``webhook-id`` header. Control:

* ``GET /_sink/stats``: ``{"count", "unique", "first", "last"}``
* ``GET /_sink/times``: every arrival time, in arrival order
* ``GET /_sink/receipts``: ``{webhook-id: first arrival time}``
* ``GET /_sink/bodies``: every request's body (text), in arrival order; kept only with
  ``--keep-bodies`` (``bench/archive`` reads the delivered events), else ``[]``
* ``POST /_sink/reset``: forget everything

    python bench/_sink.py --port 9000 [--status 204] [--keep-bodies]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from typing import Any

import httptools

REASONS = {200: "OK", 204: "No Content", 500: "Internal Server Error", 503: "Service Unavailable"}


class State:
    def __init__(self, keep_bodies: bool = False) -> None:
        self.keep_bodies = keep_bodies
        self.reset()

    def reset(self) -> None:
        self.times: list[float] = []
        self.ids: list[str | None] = []
        self.bodies: list[str] = []

    def stats(self) -> dict[str, Any]:
        return {
            "count": len(self.times),
            "unique": len(set(self.ids)),
            "first": self.times[0] if self.times else None,
            "last": self.times[-1] if self.times else None,
        }

    def receipts(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for when, wid in zip(self.times, self.ids, strict=True):
            if wid is not None and wid not in out:
                out[wid] = when
        return out


class SinkProtocol(asyncio.Protocol):
    def __init__(self, state: State, answer: bytes) -> None:
        self.state = state
        self.answer = answer
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.webhook_id: bytes | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.webhook_id = None
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 10 and name.lower() == b"webhook-id":
            self.webhook_id = value

    def on_body(self, body: bytes) -> None:
        if self.state.keep_bodies:
            self.body.append(body)

    def on_message_complete(self) -> None:
        now = time.time()
        transport = self.transport
        assert transport is not None
        if self.url.startswith(b"/_sink/"):
            transport.write(self.control())
        else:
            self.state.times.append(now)
            self.state.ids.append(None if self.webhook_id is None else self.webhook_id.decode())
            if self.state.keep_bodies:
                self.state.bodies.append(b"".join(self.body).decode(errors="replace"))
            transport.write(self.answer)
        if not self.parser.should_keep_alive():
            transport.close()

    def control(self) -> bytes:
        what = self.url[len(b"/_sink/") :].split(b"?", 1)[0].decode()
        payload: Any
        if what == "stats":
            payload = self.state.stats()
        elif what == "times":
            payload = self.state.times
        elif what == "receipts":
            payload = self.state.receipts()
        elif what == "bodies":
            payload = self.state.bodies
        elif what == "reset":
            self.state.reset()
            payload = {"reset": True}
        else:
            body = b'{"error":"unknown"}'
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        body = json.dumps(payload).encode()
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )


async def serve(port: int, status: int, keep_bodies: bool) -> None:
    state = State(keep_bodies)
    reason = REASONS.get(status, "Status").encode()
    if status == 204:
        answer = b"HTTP/1.1 204 No Content\r\n\r\n"
    else:
        answer = b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\n\r\n" % (status, reason)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(
        lambda: SinkProtocol(state, answer), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="fast HTTP sink for the delivery benchmarks")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status", type=int, default=204)
    parser.add_argument("--keep-bodies", action="store_true", help="for GET /_sink/bodies")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(serve(args.port, args.status, args.keep_bodies))
    else:
        uvloop.run(serve(args.port, args.status, args.keep_bodies))


if __name__ == "__main__":
    main()
