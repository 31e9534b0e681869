"""The durable baseline for ``bench/ingest``: the bare app, made to keep what it acknowledges.

The bare app (``bench/bare_app.py``) answers without keeping anything, so it says what the HTTP
stack costs, not what a *durable* answer costs. This app is the bare app plus the least a
durable callback needs: each body is appended to a file, and the answer waits until that
append is on disk. Appends are fsynced in groups, the way the relay's SQLite store commits:
while one ``write`` + ``fsync`` runs on a helper thread, the callbacks that arrive meanwhile
queue up and form the next group, so under load many share one fsync, yet none is answered
before its own. Nothing else (no parsing beyond the bare app's ``json.loads``, no index, no
logging): at a fixed rate its latency is the physical floor of a durable answer on this disk,
and whatever the relay adds beyond it is the relay's own.

    python bench/durable_app.py --host 127.0.0.1 --port 8002 --file /tmp/x/durable.log
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


class GroupAppender:
    """Appends bodies to one file; ``append`` returns once its body is fsynced.

    One group is on its way to the disk at a time (``_syncing``); bodies arriving meanwhile
    wait in ``_queue`` and go together as the next group as soon as the current one is done.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._queue: list[tuple[bytes, asyncio.Future[None]]] = []
        self._syncing = False

    def _write_and_sync(self, data: bytes) -> None:
        os.write(self._fd, data)
        os.fsync(self._fd)

    async def append(self, body: bytes) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((body, future))
        if not self._syncing:
            self._start_group()
        await future

    def _start_group(self) -> None:
        group, self._queue = self._queue, []
        self._syncing = True
        data = b"".join(body + b"\n" for body, _future in group)
        done = asyncio.get_running_loop().run_in_executor(None, self._write_and_sync, data)
        done.add_done_callback(lambda result: self._group_done(group, result))

    def _group_done(
        self, group: list[tuple[bytes, asyncio.Future[None]]], result: asyncio.Future[None]
    ) -> None:
        self._syncing = False
        if self._queue:  # the next group goes to the disk before this one is answered
            self._start_group()
        error = result.exception()
        for _body, future in group:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(None)


def build_app(path: Path) -> Starlette:
    appender: GroupAppender | None = None

    async def callback(request: Request) -> Response:
        nonlocal appender
        await request.json()  # what the bare app does
        body = await request.body()  # the same bytes, kept by the request
        if appender is None:
            appender = GroupAppender(path)
        await appender.append(body)
        return JSONResponse({"ok": True})

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/callbacks/{provider}/{token}", callback, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--file", type=Path, required=True, help="the file bodies go to")
    args = parser.parse_args()
    # The same uvicorn options as bench/bare_app.py and `relay serve` (one worker).
    uvicorn.run(
        build_app(args.file),
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="warning",
        server_header=False,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
