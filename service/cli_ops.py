"""The on-call commands of ``relay``: subscribers, failed deliveries and replay.

They work on the store directly, so they answer even when the HTTP API is down, and a running
relay picks up what they change at its next claim (it polls every 100 ms).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from service import replays, subscribers
from service.cli_args import ROW_LIMIT, add_meta_filter, meta_filter, parse_meta, parse_when
from service.cli_command import on_relay, print_table
from service.clock import rfc3339
from service.errors import InvalidInput, NotFound
from service.relay import Relay
from service.store.base import DeliveryFilter, Subscriber
from service.subscriber_options import masked
from service.targets import TargetPolicy

REPLAY_BATCH = 200


def add_parsers(commands: Any) -> None:
    subs = commands.add_parser(
        "subscribers", help="add, list, enable, disable, rotate and remove subscribers"
    )
    sub_commands = subs.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    add = sub_commands.add_parser("add", help="register a subscriber URL (prints its secret once)")
    add.add_argument("url")
    add.add_argument(
        "--provider",
        action="append",
        dest="providers",
        metavar="P",
        help="only events of this provider (repeatable) [default: all]",
    )
    add.add_argument(
        "--type",
        action="append",
        dest="event_types",
        metavar="T",
        help="only these event types, e.g. generation.succeeded or generation.* "
        "(repeatable) [default: all]",
    )
    add.add_argument(
        "--meta",
        type=parse_meta,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only events whose metadata has this entry (repeatable: all of them) [default: all]",
    )
    add.add_argument("--description")
    _delivery_options(add)
    add.set_defaults(func=on_relay(_subscriber_add))
    change = sub_commands.add_parser(
        "set", help="change a subscriber's rate limit or custom headers"
    )
    change.add_argument("subscriber_id")
    _delivery_options(change)
    change.add_argument("--no-rate-limit", action="store_true", help="remove its rate limit")
    change.add_argument("--no-headers", action="store_true", help="remove its custom headers")
    change.set_defaults(func=on_relay(_subscriber_set))
    sub_list = sub_commands.add_parser("list", help="list subscribers")
    sub_list.set_defaults(func=on_relay(_subscriber_list))
    remove = sub_commands.add_parser("remove", help="remove a subscriber")
    remove.add_argument("subscriber_id")
    remove.set_defaults(func=on_relay(_subscriber_remove))
    for name, what in (
        ("enable", "deliver to a subscriber again (its pending deliveries go out)"),
        (
            "disable",
            "stop delivering to a subscriber (pending deliveries wait, new events skip it)",
        ),
    ):
        switch = sub_commands.add_parser(name, help=what)
        switch.add_argument("subscriber_id")
        switch.set_defaults(func=on_relay(_subscriber_switch), enabled=name == "enable")
    rotate = sub_commands.add_parser(
        "rotate",
        help="issue a new signing secret (printed once); the old one signs beside it for 24 h",
    )
    rotate.add_argument("subscriber_id")
    rotate.set_defaults(func=on_relay(_subscriber_rotate))

    deliveries = commands.add_parser("deliveries", help="list deliveries")
    delivery_commands = deliveries.add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    listing = delivery_commands.add_parser("list", help="list deliveries, newest first")
    listing.add_argument(
        "--status",
        choices=("pending", "succeeded", "failed", "canceled"),
        default="failed",
        help="which deliveries [default: failed]",
    )
    _window(listing)
    add_meta_filter(listing, "deliveries of events")
    listing.add_argument(
        "--limit", type=ROW_LIMIT, default=50, help="most rows shown [default: 50]"
    )
    listing.add_argument(
        "--wide",
        action="store_true",
        help="each last error whole on its row [default: wrapped to the terminal's width]",
    )
    listing.set_defaults(func=on_relay(_list_deliveries))

    replay = commands.add_parser("replay", help="replay failed deliveries (fresh retry cycle)")
    replay.add_argument("delivery_ids", nargs="*", metavar="ID", help="deliveries to replay")
    replay.add_argument(
        "--failed",
        action="store_true",
        help="replay every failed delivery in the window instead of IDs",
    )
    replay.add_argument(
        "--force",
        action="store_true",
        help="replay even a delivery whose subscriber already received a later event of the"
        " same task (it then gets the older status last) [default: skip those]",
    )
    _window(replay)
    replay.set_defaults(func=on_relay(_replay))


def _delivery_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-per-second",
        type=float,
        metavar="N",
        help="deliveries a second it takes at most, per relay process [default: no limit]",
    )
    parser.add_argument(
        "--header",
        action="append",
        dest="headers",
        metavar="'NAME: VALUE'",
        help="a header sent with every delivery, e.g. an API gateway's key (repeatable;"
        " with set: replaces them all) [default: none]",
    )


def _header_option(values: list[str]) -> dict[str, str]:
    """``--header`` values as the API's ``headers`` object (checked there)."""
    headers: dict[str, str] = {}
    for value in values:
        name, colon, text = value.partition(":")
        if not colon:
            raise InvalidInput(
                "--header: give NAME: VALUE, e.g. --header 'X-Api-Key: ...'.",
                code="invalid_subscriber",
            )
        headers[name.strip()] = text.strip()
    return headers


def _delivery_changes(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.max_per_second is not None:
        body["max_per_second"] = args.max_per_second
    if args.headers:
        body["headers"] = _header_option(args.headers)
    return body


def _window(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--subscriber",
        dest="subscriber_id",
        metavar="ID",
        help="only this subscriber's deliveries [default: all]",
    )
    parser.add_argument(
        "--since",
        type=parse_when,
        metavar="WHEN",
        help="changed at or after WHEN: 2h (ago) or 2026-11-21T03:00:00Z [default: any time]",
    )
    parser.add_argument(
        "--until", type=parse_when, metavar="WHEN", help="changed before WHEN [default: now]"
    )


async def _subscriber_add(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    body: dict[str, Any] = {"url": args.url}
    for key in ("providers", "event_types", "description"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.meta:
        body["metadata"] = dict(args.meta)
    body.update(_delivery_changes(args))
    created = await subscribers.create(
        relay.store, body, TargetPolicy.from_settings(relay.settings)
    )
    note = args.policy.note("RELAY_ALLOW_PRIVATE_TARGETS", "RELAY_TARGET_ALLOWLIST")
    if note is not None:
        print(note, file=sys.stderr)
    print(f"id:     {created.id}", file=out)
    print(f"secret: {created.secrets[0]}  (shown once: give it to the subscriber)", file=out)
    return 0


async def _subscriber_set(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    body = _delivery_changes(args)
    if args.no_rate_limit:
        body["max_per_second"] = None
    if args.no_headers:
        body["headers"] = None
    if not body:
        print(
            "relay: say what to change: --max-per-second, --no-rate-limit, --header, --no-headers",
            file=sys.stderr,
        )
        return 2
    checked = await subscribers.validate_changes(
        body, TargetPolicy.from_settings(relay.settings), creating=False
    )
    changed = await relay.store.update_subscriber(args.subscriber_id, checked)
    if changed is None:
        raise NotFound(f"no subscriber {args.subscriber_id}")
    print(f"{changed.id}: {_delivery_text(changed)}", file=out)
    return 0


def _delivery_text(sub: Subscriber) -> str:
    """A subscriber's rate limit and custom headers (masked), for a line of the list."""
    words = [f"{sub.max_per_second:g}/s" if sub.max_per_second else "no limit"]
    words += [f"{name}: {masked(value)}" for name, value in sub.headers]
    return ", ".join(words)


async def _subscriber_list(relay: Relay, _args: argparse.Namespace, out: TextIO) -> int:
    rows = [["ID", "ENABLED", "PROVIDERS", "TYPES", "DELIVERY", "URL"]]
    cursor = None
    while True:
        page = await relay.store.list_subscribers(cursor, 500)
        rows += [
            [
                s.id,
                "yes" if s.enabled else f"no ({s.disabled_reason})",
                ",".join(s.providers) if s.providers else "*",
                ",".join(s.event_types) if s.event_types else "*",
                _delivery_text(s),
                s.url,
            ]
            for s in page.items
        ]
        cursor = page.next_cursor
        if cursor is None:
            break
    print_table(rows, out)
    return 0


async def _subscriber_remove(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    if not await relay.store.delete_subscriber(args.subscriber_id, relay.clock()):
        raise NotFound(f"no subscriber {args.subscriber_id}")
    print(f"removed {args.subscriber_id}", file=out)
    return 0


async def _subscriber_switch(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    """``relay subscribers enable`` / ``disable`` (``args.enabled``), as the console does; a
    running relay sees it at its next claim."""
    changed = await relay.store.update_subscriber(args.subscriber_id, {"enabled": args.enabled})
    if changed is None:
        raise NotFound(f"no subscriber {args.subscriber_id}")
    print(f"{changed.id}: {'enabled' if changed.enabled else 'disabled'}", file=out)
    return 0


async def _subscriber_rotate(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    rotated = await subscribers.rotate(relay.store, args.subscriber_id, relay.clock)
    until = rfc3339(relay.clock() + subscribers.ROTATION_OVERLAP_SECONDS)
    print(f"id:     {rotated.id}", file=out)
    print(f"secret: {rotated.secrets[0]}  (shown once: give it to the subscriber)", file=out)
    print(f"the previous secret signs beside it until {until}", file=out)
    return 0


def _filters(args: argparse.Namespace, status: str | None) -> DeliveryFilter:
    return DeliveryFilter(
        status=status,  # type: ignore[arg-type]
        subscriber_id=args.subscriber_id,
        since=args.since,
        until=args.until,
        metadata=meta_filter(args) if "meta" in args else (),
    )


async def _list_deliveries(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    page = await relay.store.list_deliveries(_filters(args, args.status), None, args.limit)
    rows = [["ID", "EVENT", "SUBSCRIBER", "STATUS", "ATTEMPTS", "UPDATED", "LAST ERROR"]]
    rows += [
        [
            d["id"],
            d["event_id"],
            d["subscriber_id"],
            d["status"],
            str(d["attempt_count"]),
            d["updated_at"],
            d["last_error"] or "",
        ]
        for d in page.items
    ]
    print_table(rows, out, None if args.wide else shutil.get_terminal_size().columns)
    more = " (more: narrow with --since/--until or raise --limit)" if page.next_cursor else ""
    print(f"{len(page.items)} {args.status} deliveries{more}", file=out)
    return 0


def _progress(done: int, total: int, out: TextIO) -> None:
    width = 30
    filled = width if total == 0 else int(width * done / total)
    end = "\n" if done >= total else ""
    print(
        f"\rreplaying [{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
        end=end,
        file=out,
        flush=True,
    )


async def _replay(relay: Relay, args: argparse.Namespace, out: TextIO) -> int:
    store = relay.store
    now = relay.clock()
    if args.delivery_ids and args.failed:
        print("relay: give delivery IDs or --failed, not both", file=sys.stderr)
        return 2
    if args.delivery_ids:
        ids = list(dict.fromkeys(args.delivery_ids))
        unknown = [i for i in ids if await store.get_delivery(i) is None]
        if unknown:  # nothing replayed: a mistyped ID is said before anything is done
            raise NotFound(f"no delivery {', '.join(unknown)}")
    elif args.failed:
        if args.subscriber_id:
            await subscribers.require_enabled(store, args.subscriber_id)
        ids = []
        cursor = None
        while True:
            page = await store.list_deliveries(_filters(args, "failed"), cursor, 500)
            ids += [d["id"] for d in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
    else:
        print(
            "relay: name delivery IDs, or use --failed [--subscriber ID] [--since 2h]",
            file=sys.stderr,
        )
        return 2
    replayed = 0
    held: dict[str, str] = {}
    _progress(0, len(ids), out)
    for start in range(0, len(ids), REPLAY_BATCH):
        batch = ids[start : start + REPLAY_BATCH]
        result = await replays.replay_many(relay, DeliveryFilter(), batch, force=args.force)
        replayed += result.count
        held.update(result.newer)
        _progress(min(start + len(batch), len(ids)), len(ids), out)
    for delivery_id, newer_id in held.items():
        print(
            f"skipped {delivery_id}: {newer_id}, of a later event of its task, already reached"
            " this subscriber or is on its way",
            file=out,
        )
    skipped = len(ids) - replayed - len(held)
    notes = [f"{skipped} skipped (not failed, or subscriber disabled)"] if skipped else []
    if held:
        notes.append(f"{len(held)} skipped (a later event delivered; --force replays them)")
    stamp = datetime.fromtimestamp(now, UTC).strftime("%H:%M:%SZ")
    note = "".join(f", {text}" for text in notes)
    print(f"replayed {replayed} of {len(ids)} deliveries at {stamp}{note}", file=out)
    print(f"follow with: relay deliveries list --status failed --since {rfc3339(now)}", file=out)
    return 0 if replayed or not ids else 1
