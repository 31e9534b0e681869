"""The relay's intake without its delivery worker, for ``bench/delivery``.

Exactly ``relay serve`` (same settings from RELAY_*, same uvicorn options), except that
``create_app(..., run_worker=False)``: accepted callbacks are stored and fanned out into
pending deliveries, and nothing is delivered. ``bench/delivery`` uses it to build a backlog,
then starts a normal ``relay serve`` on the same database to time the drain.

    RELAY_DATABASE_URL=sqlite:////tmp/x.db ... python bench/_relay_noworker.py --port 9001
"""

from __future__ import annotations

import argparse

import uvicorn

from service.app import create_app, uvicorn_options
from service.logs import configure_logging
from service.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    uvicorn.run(
        create_app(settings, run_worker=False),
        host=args.host,
        port=args.port,
        timeout_graceful_shutdown=30,
        **uvicorn_options(settings),  # type: ignore[arg-type]
    )


if __name__ == "__main__":
    main()
