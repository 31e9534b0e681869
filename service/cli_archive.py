"""``relay archive``: list archive jobs, retry a failed one.

Like the other on-call commands they work on the store directly; a running relay that archives
claims a retried job at its next look (within a second).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from service import archive_retries
from service.cli_args import ROW_LIMIT
from service.cli_command import on_relay, print_table
from service.clock import rfc3339
from service.errors import Conflict, NotFound
from service.relay import Relay

STATUSES = ("pending", "archived", "failed")


def add_parsers(commands: Any) -> None:
    archive = commands.add_parser("archive", help="list archive jobs, retry failed ones")
    sub = archive.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    listing = sub.add_parser("list", help="list archive jobs, newest first")
    which = listing.add_mutually_exclusive_group()
    which.add_argument("--failed", action="store_true", help="only failed jobs (--status failed)")
    which.add_argument("--status", choices=STATUSES, help="only this status [default: any]")
    listing.add_argument(
        "--limit", type=ROW_LIMIT, default=50, help="most rows shown [default: 50]"
    )
    listing.set_defaults(func=on_relay(_list))
    retry = sub.add_parser(
        "retry", help="run a failed archive job again, from scratch, with a new deadline"
    )
    retry.add_argument("event_id", help="the event whose job to retry (evt_...)")
    retry.set_defaults(func=on_relay(_retry))


async def _list(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    status = "failed" if args.failed else args.status
    page = await relay.store.list_archive_jobs(status, None, args.limit)
    rows = [["EVENT", "PROVIDER", "TASK", "STATUS", "ATTEMPTS", "LAST ERROR"]]
    rows += [
        [
            job.event_id,
            job.provider,
            job.task_id,
            job.status,
            str(job.attempts),
            (job.last_error or "")[:60],
        ]
        for job in page.items
    ]
    print_table(rows, out)
    more = " (more: raise --limit)" if page.next_cursor else ""
    noun = f"{status} archive jobs" if status else "archive jobs"
    print(f"{len(page.items)} {noun}{more}", file=out)
    return 0


async def _retry(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    try:
        job = await archive_retries.retry(relay, args.event_id)
    except (NotFound, Conflict) as exc:
        print(f"relay: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    until = rfc3339(job.deadline_at)
    print(f"{job.event_id}: {job.status}, runs again now until {until}", file=out)
    return 0
