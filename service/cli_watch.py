"""``relay watch``, ``relay watches`` and ``relay simulate``.

``relay watch`` registers a watch in the store directly (a running relay claims it at its next
look, within a second); ``relay simulate`` needs no store at all: it plays a provider.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from service import simulate, suspects, watch_requests
from service.cli_args import (
    ROW_LIMIT,
    add_meta_filter,
    http_url,
    meta_filter,
    parse_duration,
    parse_meta,
    positive_seconds,
)
from service.cli_command import on_relay, print_table
from service.relay import Relay
from service.settings import Settings
from service.store.budget import BudgetState
from service.store.watch_model import WATCH_STATES, Watch, WatchFilter


def _delays(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not seconds: {text!r} (try 1,2,4)") from None
    if any(not 0 <= value <= 3600 for value in values):
        raise argparse.ArgumentTypeError("each delay must be from 0 to 3600 seconds")
    return values


def add_parsers(commands: Any) -> None:
    watch = commands.add_parser(
        "watch", help="poll a provider's status API for a task until it is done"
    )
    watch.add_argument("provider", help="evolink, apiframe, rivya or reve-art")
    watch.add_argument("task_id", help="the id the provider gave the task")
    watch.add_argument(
        "--meta",
        type=parse_meta,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata attached to every event of this task (repeatable)",
    )
    watch.add_argument(
        "--deadline",
        type=parse_duration,
        default=None,
        help="stop polling after this, e.g. 6h [RELAY_WATCH_DEADLINE, default: 24h]",
    )
    watch.add_argument(
        "--poll-after",
        type=parse_duration,
        default=None,
        help="first poll only after this, and only if no terminal callback came, e.g. 10m",
    )
    watch.set_defaults(func=on_relay(_watch))

    listing = commands.add_parser(
        "watches", help="list or cancel watches; release or dismiss suspect callbacks"
    )
    sub = listing.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    ls = sub.add_parser("list", help="list watches, newest first")
    ls.add_argument("--state", choices=WATCH_STATES)
    ls.add_argument("--provider")
    shown = ls.add_mutually_exclusive_group()
    shown.add_argument(
        "--suspect", action="store_true", help="only suspect callbacks nobody decided about yet"
    )
    shown.add_argument("--held", action="store_true", help="only callbacks awaiting confirmation")
    shown.add_argument(
        "--flagged", action="store_true", help="only watches seeing an unknown status word"
    )
    add_meta_filter(ls, "watches")
    ls.add_argument("--limit", type=ROW_LIMIT, default=50, help="[default: 50]")
    ls.set_defaults(func=on_relay(_list))
    cancel = sub.add_parser("cancel", help="cancel an active watch")
    cancel.add_argument("watch_id")
    cancel.set_defaults(func=on_relay(_cancel))
    release = sub.add_parser(
        "release", help="forward a watch's suspect callback as received (once), recorded"
    )
    release.add_argument("watch_id")
    release.set_defaults(func=on_relay(_decide), decision="released")
    dismiss = sub.add_parser("dismiss", help="drop a watch's suspect callback, recorded")
    dismiss.add_argument("watch_id")
    dismiss.set_defaults(func=on_relay(_decide), decision="dismissed")

    sim = commands.add_parser(
        "simulate",
        help="send a realistic callback as a provider would (payload, signature, retries)",
    )
    sim.add_argument("provider", help="evolink, apiframe or rivya")
    sim.add_argument(
        "--callback-url", type=http_url, required=True, help="where to send it (a minted URL)"
    )
    sim.add_argument(
        "--status",
        default="completed",
        choices=simulate.STATUSES,
        help="the task's status [default: completed]",
    )
    sim.add_argument("--task-id", help="[default: a new id shaped like the provider's]")
    sim.add_argument(
        "--retry-delays",
        type=_delays,
        default=None,
        help="seconds between attempts after a non-2xx answer"
        " [default: the provider's own, e.g. 1,2,4 for evolink]",
    )
    sim.add_argument(
        "--timeout",
        type=positive_seconds,
        default=simulate.TIMEOUT_SECONDS,
        help="seconds per attempt",
    )
    sim.set_defaults(func=_simulate)


def _simulate(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``relay simulate``: no store, no relay; it plays the provider."""
    callback = simulate.build_callback(args.provider, args.status, args.task_id, settings)
    delays = (
        simulate.RETRY_DELAYS[args.provider] if args.retry_delays is None else args.retry_delays
    )
    delivered = simulate.send(callback, args.callback_url, delays, timeout=args.timeout, out=out)
    return 0 if delivered else 1


async def _watch(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    body: dict[str, Any] = {"provider": args.provider, "task_id": args.task_id}
    if args.meta:
        body["metadata"] = dict(args.meta)
    if args.deadline is not None:
        body["deadline_seconds"] = args.deadline
    if args.poll_after is not None:
        body["poll_after_seconds"] = args.poll_after
    watch = await watch_requests.create_watch(relay, body)
    print(json.dumps(watch_requests.watch_json(watch), indent=2), file=out)
    return 0


async def _cancel(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    watch = await watch_requests.cancel_watch(relay, args.watch_id)
    print(f"canceled {watch.id} ({watch.provider} {watch.task_id})", file=out)
    return 0


async def _decide(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    """``relay watches release`` / ``dismiss`` (``args.decision``)."""
    decided = await suspects.decide(relay, args.watch_id, args.decision, "cli")
    w = decided.watch
    result = decided.result
    told = "" if result is None else f": {result.outcome}, event {result.event_id}"
    print(
        f"{args.decision} the suspect callback of {w.id} ({w.provider} {w.task_id}){told}",
        file=out,
    )
    return 0


async def _list(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    page = await relay.store.list_watches(
        WatchFilter(
            state=args.state,
            provider=args.provider,
            undecided=args.suspect,
            held=args.held,
            flagged=args.flagged,
            metadata=meta_filter(args),
        ),
        None,
        args.limit,
    )
    rows = [["ID", "PROVIDER", "TASK", "STATE", "POLLS", "LAST STATUS", "NEXT POLL", "NOTE"]]
    budgets: dict[str, BudgetState] = {}
    for w in page.items:
        shown = await watch_requests.watch_view(relay, w, budgets)
        if shown["waiting_for"]:
            shown["next_poll_at"] += f" (waits for {shown['waiting_for']})"
        rows.append(
            [
                w.id,
                w.provider,
                w.task_id,
                w.state,
                str(w.polls),
                w.last_status or "",
                shown["next_poll_at"] or "",
                _note(w),
            ]
        )
    print_table(rows, out)
    more = " (more: raise --limit)" if page.next_cursor else ""
    print(f"{len(page.items)} watches{more}", file=out)
    return 0


def _note(w: Watch) -> str:
    """What an operator should know first: a suspect callback, an unknown word, an error."""
    if w.suspect is not None:
        return f"suspect: {w.suspect}, claimed {w.suspect_status} ({w.decision or 'undecided'})"
    if w.unknown_status is not None:
        return f"unknown status word: {w.unknown_status[:40]}"
    return (w.last_error or "")[:50]
