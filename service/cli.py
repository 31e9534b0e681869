"""``relay``: serve the relay and operate it from a shell.

Every command reads the same ``RELAY_*`` variables as the server; flags override them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from service import __version__, cli_ops
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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run the relay (HTTP API and delivery worker)")
    serve.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on [default: 127.0.0.1]"
    )
    serve.add_argument("--port", type=int, default=8000, help="port to listen on [default: 8000]")
    serve.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes [default: 1]"
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
    cli_ops.add_parsers(commands)
    return parser


async def _with_relay(settings: Settings, action: Any) -> Any:
    relay = await Relay.start(settings)
    try:
        return await action(relay)
    finally:
        await relay.close()


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import UVICORN_OPTIONS, create_app

    if args.workers > 1 and settings.database_url.startswith("sqlite"):
        print("relay: SQLite serves one process; use --workers 1 or PostgreSQL.", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        timeout_graceful_shutdown=30,
        **UVICORN_OPTIONS,  # type: ignore[arg-type]
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        if args.command == "serve":
            return _serve(settings, args)
        if args.command == "admin-token":
            relay_settings = asyncio.run(_with_relay(settings, lambda r: _async(r.settings)))
            print(relay_settings.admin_token)
            return 0
        if args.command == "mint-url":
            minted = asyncio.run(
                _with_relay(
                    settings,
                    lambda r: r.mint_callback_url(args.provider, dict(args.meta), args.ttl),
                )
            )
            print(json.dumps(minted, indent=2))
            return 0
        if args.command in ("subscribers", "deliveries", "replay"):
            code: int = asyncio.run(_with_relay(settings, lambda r: cli_ops.run(r, args)))
            return code
    except RelayError as exc:
        print(f"relay: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return 2  # pragma: no cover - argparse refuses unknown commands


async def _async(value: Any) -> Any:
    return value
