"""``relay events list``: the events stored, newest first, found by provider, task, status,
time or metadata (``--meta user_id=u-42``: what happened to that user's jobs).

Like the other on-call commands it reads the store directly.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from service.cli_args import add_meta_filter, meta_filter, parse_when
from service.cli_command import on_relay, print_table
from service.events import STATUSES
from service.relay import Relay
from service.store.base import EventFilter


def add_parsers(commands: Any) -> None:
    events = commands.add_parser("events", help="list events")
    sub = events.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    listing = sub.add_parser("list", help="list events, newest first")
    listing.add_argument("--provider")
    listing.add_argument("--task", dest="task_id", metavar="TASK_ID")
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument(
        "--since", type=parse_when, metavar="WHEN", help="received since, e.g. 2h or a time"
    )
    add_meta_filter(listing, "events")
    listing.add_argument("--limit", type=int, default=50, help="most rows shown [default: 50]")
    listing.set_defaults(func=on_relay(_list))


async def _list(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    filters = EventFilter(
        provider=args.provider,
        task_id=args.task_id,
        status=args.status,
        since=args.since,
        metadata=meta_filter(args),
    )
    page = await relay.store.list_events(filters, None, args.limit)
    rows = [["ID", "PROVIDER", "TASK", "STATUS", "STATE", "RECEIVED", "METADATA"]]
    for item in page.items:
        event = json.loads(item)
        data = event["data"]
        rows.append(
            [
                event["id"],
                data["provider"],
                data["task_id"],
                data["status"],
                event["relay"]["state"],
                event["time"],
                json.dumps(data.get("metadata") or {}, separators=(",", ":"))[:60],
            ]
        )
    print_table(rows, out)
    more = " (more: narrow the filters or raise --limit)" if page.next_cursor else ""
    print(f"{len(page.items)} events{more}", file=out)
    return 0
