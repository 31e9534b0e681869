"""The baseline for ``bench/ingest``: a bare Starlette app, the floor the relay is measured against.

One route with the relay's callback path shape parses the JSON body and answers 200
``{"ok":true}``; nothing is stored or logged. It runs under ``uvicorn.run`` with the same
options the relay's ``relay serve`` uses (one worker unless ``--workers``, uvicorn's access log
off, no server header, auto loop and HTTP implementation), so the difference measured is the
relay's own work.

    python bench/bare_app.py --host 127.0.0.1 --port 8001
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def callback(request: Request) -> Response:
    await request.json()
    return JSONResponse({"ok": True})


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/callbacks/{provider}/{token}", callback, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes [1]")
    args = parser.parse_args()
    # Mirrors service.cli._serve: no access log, no server header; like `relay serve --workers
    # N`, several workers need the app as an import string.
    uvicorn.run(
        "bare_app:app" if args.workers > 1 else app,
        app_dir=str(Path(__file__).resolve().parent),
        workers=args.workers,
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="warning",
        server_header=False,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
