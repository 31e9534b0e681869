"""``relay``: serve the relay and operate it from a shell.

Every command reads the same ``RELAY_*`` variables as the server; flags override them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from service import __version__, cli_help, cli_ops, cli_status, cli_watch
from service.errors import RelayError
from service.logs import configure_logging
from service.relay import Relay
from service.settings import DOCUMENTED, PREFIX, ConfigError, Settings

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d``, ``1w`` -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 30m, 2h, 7d)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _meta(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--meta takes key=value, got {text!r}")
    return key, value


def _environment_help() -> str:
    lines = ["environment (flags override):"]
    lines += [
        f"  {PREFIX}{name:<26} {desc} [default: {default}]"
        for name, (default, desc) in DOCUMENTED.items()
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="callback-relay: receive AI-generation callbacks, store them, relay them.",
        epilog=_environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"callback-relay {__version__}")
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="the store to work on [RELAY_DATABASE_URL, default: sqlite:///./relay.db]",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run the relay (HTTP API and delivery worker)")
    serve.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on [default: 127.0.0.1]"
    )
    serve.add_argument("--port", type=int, default=8000, help="port to listen on [default: 8000]")
    serve.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes [default: 1]"
    )
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="serve the API only; run `relay worker` elsewhere [RELAY_RUN_WORKER, default: true]",
    )
    serve.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not apply schema migrations at start [RELAY_MIGRATE_ON_START, default: true]",
    )
    worker = commands.add_parser("worker", help="run only the delivery worker (no HTTP API)")
    worker.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not apply schema migrations at start [RELAY_MIGRATE_ON_START, default: true]",
    )
    commands.add_parser("migrate", help="apply pending schema migrations, then exit")
    prune = commands.add_parser("prune", help="prune what is past retention now, with progress")
    prune.add_argument(
        "--days",
        type=int,
        default=None,
        help="retention in days [RELAY_RETENTION_DAYS, default: 30]; failed deliveries stay"
        " unless RELAY_FAILED_RETENTION_DAYS says otherwise",
    )

    commands.add_parser("admin-token", help="print the admin API's bearer token")

    mint = commands.add_parser("mint-url", help="mint a signed callback URL for a provider")
    mint.add_argument("provider", help="evolink or apiframe")
    mint.add_argument(
        "--ttl",
        type=parse_duration,
        default=7 * 86400,
        help="lifetime, e.g. 7d or 12h [default: 7d]",
    )
    mint.add_argument(
        "--meta",
        type=_meta,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata attached to every event from this URL (repeatable)",
    )
    mint.add_argument(
        "--reusable",
        action="store_true",
        help="let callbacks of any task come through this URL (default: the first task's only)",
    )
    cli_ops.add_parsers(commands)
    cli_watch.add_parsers(commands, parse_duration, _meta)
    cli_status.add_parser(commands)
    cli_help.document_defaults(parser)
    return parser


async def _with_relay(settings: Settings, action: Any) -> Any:
    relay = await Relay.start(settings)
    try:
        return await action(relay)
    finally:
        await relay.close()


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app, uvicorn_options
    from service.tuning import tune_for_serving

    if args.workers > 1 and settings.database_url.startswith("sqlite"):
        print("relay: SQLite serves one process; use --workers 1 or PostgreSQL.", file=sys.stderr)
        return 2
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "timeout_graceful_shutdown": 30,
        **uvicorn_options(settings),
    }
    if args.workers > 1:
        # Worker processes import the app; the flags reach them as the settings they stand for.
        os.environ["RELAY_RUN_WORKER"] = str(settings.run_worker).lower()
        os.environ["RELAY_MIGRATE_ON_START"] = str(settings.migrate_on_start).lower()
        # Each process counts its own metrics; with a shared directory a scrape answered by any
        # one of them adds up all of them (service.metrics). A fresh one per start.
        metrics_dir = None
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            metrics_dir = tempfile.mkdtemp(prefix="relay-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        try:
            uvicorn.run("service.asgi:app", workers=args.workers, **options)
        finally:
            if metrics_dir is not None:
                shutil.rmtree(metrics_dir, ignore_errors=True)
    else:
        app = create_app(settings, run_worker=settings.run_worker)
        tune_for_serving()  # (worker processes: service.asgi does it)
        uvicorn.run(app, **options)
    return 0


async def _run_worker(settings: Settings) -> int:
    """``relay worker``: deliveries and retention without the HTTP API, until SIGTERM/SIGINT."""
    from service.worker import BackgroundWork

    relay = await Relay.start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    background = BackgroundWork(relay)
    await background.start()
    print("relay worker: delivering (SIGTERM or Ctrl-C stops it)", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await background.stop()
        await relay.close()
    return 0


async def _migrate(settings: Settings) -> int:
    """``relay migrate``: apply the pending schema migrations, one progress line each."""
    from service.store import open_store

    applied: list[int] = []

    def progress(version: int, total: int, name: str) -> None:
        applied.append(version)
        print(f"applying migration {version}/{total}: {name}", file=sys.stderr, flush=True)

    store = open_store(settings.database_url, migrate=True)
    store.on_migration = progress
    relay = await Relay.start(settings, store)
    await relay.close()
    print(f"relay: the schema is up to date ({len(applied)} applied)", file=sys.stderr)
    return 0


async def _prune(relay: Relay, days: int) -> int:
    from service.retention import BATCH, Retention

    retention = Retention(days, relay.settings.failed_retention_days)
    before, failed_before = retention.cutoffs(time.time())
    total = 0
    while True:
        removed = await relay.store.prune(before, BATCH, failed_before)
        total += removed
        print(f"\rpruned {total} events older than {days} days", end="", flush=True)
        if removed < BATCH:
            print()
            return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    if args.database_url:
        settings = settings.with_changes(database_url=args.database_url)
    configure_logging(settings.log_format, settings.log_level)
    try:
        if args.command in ("serve", "worker", "migrate") and getattr(args, "no_migrate", False):
            settings = settings.with_changes(migrate_on_start=False)
        if args.command == "serve":
            if args.no_worker:
                settings = settings.with_changes(run_worker=False)
            return _serve(settings, args)
        if args.command == "worker":
            return asyncio.run(_run_worker(settings))
        if args.command == "migrate":
            return asyncio.run(_migrate(settings.with_changes(migrate_on_start=True)))
        if args.command == "prune":
            days = settings.retention_days if args.days is None else args.days
            return int(asyncio.run(_with_relay(settings, lambda r: _prune(r, days))))
        if args.command == "admin-token":
            relay_settings = asyncio.run(_with_relay(settings, lambda r: _async(r.settings)))
            print(relay_settings.admin_token)
            return 0
        if args.command == "mint-url":
            minted = asyncio.run(
                _with_relay(
                    settings,
                    lambda r: r.mint_callback_url(
                        args.provider, dict(args.meta), args.ttl, args.reusable
                    ),
                )
            )
            print(json.dumps(minted, indent=2))
            return 0
        if args.command in ("subscribers", "deliveries", "replay"):
            code: int = asyncio.run(_with_relay(settings, lambda r: cli_ops.run(r, args)))
            return code
        if args.command == "status":
            return int(asyncio.run(_with_relay(settings, lambda r: cli_status.run(r, args))))
        if args.command in cli_watch.COMMANDS:
            return cli_watch.run(settings, args, _with_relay)
    except RelayError as exc:
        print(f"relay: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return 2  # pragma: no cover - argparse refuses unknown commands


async def _async(value: Any) -> Any:
    return value
