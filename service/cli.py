"""``relay``: serve the relay and operate it from a shell.

Every command reads the same ``RELAY_*`` variables as the server; flags override them. Each
command's parser names its handler (``set_defaults(func=...)``, see ``service.cli_command``);
the on-call commands live beside this module (``cli_ops``, ``cli_watch``, ``cli_archive``,
``cli_keys``, ``cli_status``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, TextIO

import structlog

from service import (
    __version__,
    cli_archive,
    cli_events,
    cli_help,
    cli_keys,
    cli_ops,
    cli_status,
    cli_watch,
    tracing,
)
from service.cli_args import PORT, parse_duration, parse_meta, whole_number
from service.cli_command import Command, on_relay
from service.cli_parser import USAGE_ERROR, RelayArgumentParser, one_line
from service.errors import RelayError
from service.logs import configure_logging
from service.relay import Relay
from service.settings import DOCUMENTED, PREFIX, ConfigError, ListenAddress, Settings

log = structlog.get_logger("service.cli")


def _environment_help() -> str:
    lines = ["environment (flags override):"]
    lines += [
        f"  {PREFIX}{name:<26} {desc} [default: {default}]"
        for name, (default, desc) in DOCUMENTED.items()
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = RelayArgumentParser(
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
    serve.add_argument("--port", type=PORT, help="port to listen on [RELAY_PORT, default: 8000]")
    serve.add_argument(
        "--workers",
        type=whole_number(1, 64),
        default=1,
        help="uvicorn worker processes [default: 1]",
    )
    serve.add_argument(
        "--admin-port",
        type=PORT,
        metavar="PORT",
        help="serve the admin API, /ops, /metrics and /openapi.json on this port only; the"
        " public one keeps callbacks, /archive, /healthz, /readyz"
        " [RELAY_ADMIN_LISTEN, default: off: one port serves everything]",
    )
    serve.add_argument(
        "--admin-host",
        metavar="HOST",
        help="interface of the admin listener [RELAY_ADMIN_LISTEN, default: 127.0.0.1]",
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
    migrate = commands.add_parser("migrate", help="apply pending schema migrations, then exit")
    prune = commands.add_parser("prune", help="prune what is past retention now, with progress")
    prune.add_argument(
        "--days",
        type=whole_number(1, 36_500),
        default=None,
        help="retention in days [RELAY_RETENTION_DAYS, default: 30]; failed deliveries stay"
        " unless RELAY_FAILED_RETENTION_DAYS says otherwise",
    )

    admin_token = commands.add_parser(
        "admin-token", help="print the admin token (the bootstrap key of scope admin)"
    )

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
        type=parse_meta,
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
    serve.set_defaults(func=_serve, logs=True)
    worker.set_defaults(func=_worker, logs=True)
    migrate.set_defaults(func=_migrate)
    prune.set_defaults(func=on_relay(_prune))
    admin_token.set_defaults(func=on_relay(_admin_token))
    mint.set_defaults(func=on_relay(_mint_url))
    cli_ops.add_parsers(commands)
    cli_events.add_parsers(commands)
    cli_watch.add_parsers(commands)
    cli_archive.add_parsers(commands)
    cli_keys.add_parsers(commands)
    cli_status.add_parser(commands)
    _add_verbose_flags(parser)
    cli_help.document_defaults(parser)
    return parser


def _add_verbose_flags(parser: argparse.ArgumentParser) -> None:
    """``--verbose`` on every command that does not run the relay: they print their own lines,
    and the relay's log lines (JSON on stderr) only when asked, or when a warning or an error."""
    for sub in cli_help.subcommands(parser).values():
        leaf = not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
        if leaf and sub is not parser and not sub.get_default("logs"):
            sub.add_argument(
                "--verbose",
                action="store_true",
                help="also show the relay's log lines [default: warnings and errors only]",
            )


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    """``relay serve``: the app on one listener, or on a public and an admin one
    (``service.listeners``), in one process or ``--workers`` processes."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from service import listeners
    from service.app import create_app, uvicorn_options
    from service.store import is_postgres, postgres_store_class
    from service.tuning import tune_for_serving

    if args.workers > 1 and settings.database_url.startswith("sqlite"):
        print("relay: SQLite serves one process; use --workers 1 or PostgreSQL.", file=sys.stderr)
        return 2
    if is_postgres(settings.database_url):
        # Said here, in one line: inside uvicorn's start-up it would be a traceback.
        postgres_store_class()
    public = ListenAddress(args.host, settings.port if args.port is None else args.port)
    admin = settings.admin_listen
    if admin is not None and admin.port == public.port and public.port != 0:
        # The app tells the listeners apart by port (service.listeners).
        print(
            f"relay: the admin listener needs a port of its own ({admin} and {public})",
            file=sys.stderr,
        )
        return 2
    try:
        sockets = listeners.bind_all(public, admin)
    except listeners.ListenError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    public = listeners.bound_address(sockets[0], public.host)
    if admin is not None:
        admin = listeners.bound_address(sockets[1], admin.host)
        settings = settings.with_changes(admin_listen=admin)
    if not os.environ.get(f"{PREFIX}PUBLIC_URL", "").strip():
        # No public URL configured: the default follows the port served (--port 8080, or the
        # one the system chose for 0), so minted URLs reach this relay.
        settings = settings.with_changes(public_url=listeners.default_public_url(public))
    log.info(
        "listening",
        public=listeners.http_url(public),
        admin=listeners.http_url(admin or public),
        workers=args.workers,
    )
    options: dict[str, Any] = {"timeout_graceful_shutdown": 30, **uvicorn_options(settings)}
    if args.workers > 1:
        # Worker processes import the app; the flags reach them as the settings they stand for.
        os.environ["RELAY_RUN_WORKER"] = str(settings.run_worker).lower()
        os.environ["RELAY_MIGRATE_ON_START"] = str(settings.migrate_on_start).lower()
        os.environ["RELAY_PUBLIC_URL"] = settings.public_url
        if admin is not None:
            os.environ["RELAY_ADMIN_LISTEN"] = str(admin)
        # Each process counts its own metrics; with a shared directory a scrape answered by any
        # one of them adds up all of them (service.metrics). A fresh one per start.
        metrics_dir = None
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            metrics_dir = tempfile.mkdtemp(prefix="relay-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        try:
            # What uvicorn.run does for workers, with both listeners' sockets: every worker
            # accepts on each of them.
            config = uvicorn.Config("service.asgi:app", workers=args.workers, **options)
            Multiprocess(config, sockets=sockets).run()
        finally:
            if metrics_dir is not None:
                shutil.rmtree(metrics_dir, ignore_errors=True)
    else:
        app = create_app(settings, run_worker=settings.run_worker)
        tune_for_serving()  # (worker processes: service.asgi does it)
        uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=sockets)
    return 0


def _worker(settings: Settings, _args: argparse.Namespace) -> int:
    return asyncio.run(_run_worker(settings))


async def _run_worker(settings: Settings) -> int:
    """``relay worker``: deliveries and retention without the HTTP API, until SIGTERM/SIGINT."""
    from service.worker import BackgroundWork

    relay = await Relay.start(settings)
    relay.tracer = tracing.configure()  # OTEL_*: spans exported, or headers only
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


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    return asyncio.run(_run_migrations(settings.with_changes(migrate_on_start=True)))


async def _run_migrations(settings: Settings) -> int:
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


async def _prune(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    """``relay prune``: what is past retention now, in batches, with a progress line."""
    from service.retention import Retention, prune_once

    days = relay.settings.retention_days if args.days is None else args.days

    def progress(total: int) -> None:
        print(f"\rpruned {total} events older than {days} days", end="", file=out, flush=True)

    retention = Retention(days, relay.settings.failed_retention_days)
    await prune_once(relay.store, retention, clock=relay.clock, pause=0, progress=progress)
    print(file=out)
    return 0


async def _admin_token(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    mismatch = args.policy.secret_mismatch("admin_token")
    if mismatch is not None:
        print(f"relay: {mismatch}", file=sys.stderr)
        return USAGE_ERROR
    print(relay.settings.admin_token, file=out)
    return 0


async def _mint_url(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    mismatch = args.policy.secret_mismatch("signing_key")
    if mismatch is not None:  # the relay would refuse every callback through the URL
        print(f"relay: {mismatch}", file=sys.stderr)
        return USAGE_ERROR
    minted = await relay.mint_callback_url(args.provider, dict(args.meta), args.ttl, args.reusable)
    print(json.dumps(minted, indent=2), file=out)
    note = args.policy.note("RELAY_PUBLIC_URL")
    if note is not None:
        print(note, file=sys.stderr)
    return 0


def _with_flags(settings: Settings, args: argparse.Namespace) -> Settings:
    """The settings with the flags that override ``RELAY_*`` variables applied."""
    if args.database_url:
        settings = settings.with_changes(database_url=args.database_url)
    if getattr(args, "no_migrate", False):
        settings = settings.with_changes(migrate_on_start=False)
    if getattr(args, "no_worker", False):
        settings = settings.with_changes(run_worker=False)
    return _with_admin_flags(
        settings, getattr(args, "admin_host", None), getattr(args, "admin_port", None)
    )


def _with_admin_flags(settings: Settings, host: str | None, port: int | None) -> Settings:
    """``--admin-host/--admin-port`` over ``RELAY_ADMIN_LISTEN``: either flag replaces its
    half of the variable; ``--admin-port`` alone listens on 127.0.0.1."""
    if host is None and port is None:
        return settings
    current = settings.admin_listen
    if port is None:
        if current is None:
            raise ConfigError("--admin-host needs --admin-port (or RELAY_ADMIN_LISTEN)")
        port = current.port
    if host is None:
        host = current.host if current is not None else "127.0.0.1"
    return settings.with_changes(admin_listen=ListenAddress(host, port))


def _at_least_warning(level: str) -> str:
    """``level`` (RELAY_LOG_LEVEL), raised to ``warning`` if lower."""
    order = ["debug", "info", "warning", "error", "critical"]
    return level if level in order[2:] else "warning"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _with_flags(Settings.from_env(), args)
    except ConfigError as exc:
        print(f"relay: {one_line(str(exc))}", file=sys.stderr)
        return USAGE_ERROR
    level = settings.log_level
    if not getattr(args, "logs", False) and not getattr(args, "verbose", False):
        level = _at_least_warning(level)
    configure_logging(settings.log_format, level)
    command: Command = args.func
    try:
        return command(settings, args)
    except ConfigError as exc:  # found once the store opens (psycopg missing, say)
        print(f"relay: {one_line(str(exc))}", file=sys.stderr)
        return USAGE_ERROR
    except RelayError as exc:
        print(f"relay: {exc.code}: {one_line(exc.message)}", file=sys.stderr)
        # A 4xx is what the API answers to a wrong request: here, a wrong value typed.
        return USAGE_ERROR if exc.status_code < 500 else 1
    except KeyboardInterrupt:  # Ctrl-C in a long command (a replay, a simulated retry)
        print("relay: interrupted", file=sys.stderr)
        return 130
