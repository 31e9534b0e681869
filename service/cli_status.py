"""``relay status``: the ops console's overview, as a table on a terminal.

It reads the store directly, so it answers even when the HTTP API does not. Duplicates and
refused callbacks are never stored, so only a running relay knows them: the table says where
to look (``/ops`` or ``/metrics``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from service import overview
from service.cli_command import on_relay, print_table
from service.relay import Relay


def add_parser(commands: Any) -> None:
    status = commands.add_parser(
        "status", help="the overview: last hour's callbacks, events, deliveries; what waits now"
    )
    status.add_argument(
        "--json", action="store_true", help="print JSON instead of a table [default: table]"
    )
    status.set_defaults(func=on_relay(run))


async def run(relay: Relay, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    summary = await overview.build(relay.store, relay.clock)
    if args.json:
        print(json.dumps(dataclasses.asdict(summary), indent=2), file=out)
        return 0
    stamp = datetime.fromtimestamp(summary.generated_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    database = relay.settings.database_url.split("://", 1)[0]
    print(f"callback-relay status at {stamp} ({database})", file=out)
    print(file=out)
    print_table(overview.table_rows(summary), out)
    if summary.failed:
        print(file=out)
        print(
            f"{summary.failed} failed deliveries wait: relay deliveries list --status failed;"
            " relay replay --failed [--subscriber ID] [--since 2h]",
            file=out,
        )
    return 0
