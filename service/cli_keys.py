"""``relay keys``: create, list and revoke scoped API keys (``service.api_keys``).

Like the other on-call commands they work on the store directly; a running relay sees a new or
revoked key at the next request that presents it (keys are looked up on every request, never
cached).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from service import api_keys
from service.cli_command import on_relay, print_table
from service.clock import rfc3339
from service.errors import NotFound
from service.relay import Relay


def add_parsers(commands: Any) -> None:
    keys = commands.add_parser("keys", help="create, list and revoke scoped API keys")
    sub = keys.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    create = sub.add_parser(
        "create",
        help="create a key (printed once, on stdout); scopes: read < mint < operate < admin,"
        " each including the ones before it",
    )
    create.add_argument("--scope", required=True, choices=api_keys.SCOPES, help="what it may do")
    create.add_argument("--name", help="a label for people, e.g. prometheus [default: none]")
    create.set_defaults(func=on_relay(_create))
    listing = sub.add_parser("list", help="list keys, oldest first (never the keys themselves)")
    listing.set_defaults(func=on_relay(_list))
    revoke = sub.add_parser("revoke", help="revoke a key (its console sessions end too)")
    revoke.add_argument("key_id", help="the key's id (key_...), from `relay keys list`")
    revoke.set_defaults(func=on_relay(_revoke))


async def _create(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    record, key = await api_keys.create(relay, args.scope, args.name)
    # The key alone on stdout (KEY=$(relay keys create ...)); the words for people on stderr.
    print(key, file=out)
    print(
        f"created {record.id} (scope {record.scope}): store the key now, it is not shown again",
        file=sys.stderr,
    )
    return 0


def _when(value: float | None) -> str:
    return "-" if value is None else rfc3339(value)


async def _list(relay: Relay, _args: argparse.Namespace, out: TextIO) -> int:
    records = await relay.store.list_api_keys()
    rows = [["ID", "NAME", "SCOPE", "CREATED", "LAST USED", "REVOKED"]]
    rows += [
        [
            r.id,
            r.name or "-",
            r.scope,
            _when(r.created_at),
            _when(r.last_used_at),
            _when(r.revoked_at),
        ]
        for r in records
    ]
    print_table(rows, out)
    live = sum(1 for r in records if r.revoked_at is None)
    print(f"{len(records)} keys ({live} live)", file=out)
    return 0


async def _revoke(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    try:
        record = await api_keys.revoke(relay, args.key_id)
    except NotFound as exc:
        print(f"relay: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    print(f"{record.id}: revoked at {_when(record.revoked_at)}", file=out)
    return 0
