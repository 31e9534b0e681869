"""How a ``relay`` command runs.

Each (sub)command's parser names its handler with ``set_defaults(func=...)``, a ``Command``
that ``service.cli.main`` calls with the settings and the parsed arguments. Most commands work
on the store: ``on_relay`` opens the relay for the length of the command and closes it after,
whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import textwrap
from collections.abc import Awaitable, Callable
from typing import TextIO

from service import served_policy
from service.relay import Relay
from service.settings import Settings

#: The narrowest a wrapped last column gets (``print_table``), however wide the others.
MIN_WRAP = 30

#: A command: the settings (flags applied) and the parsed arguments -> the exit status.
Command = Callable[[Settings, argparse.Namespace], int]
#: A command that works on an open relay, printing to ``out``.
RelayCommand = Callable[[Relay, argparse.Namespace, TextIO], Awaitable[int]]


def on_relay(command: RelayCommand) -> Command:
    """``command`` run on a relay opened for it (and closed after), printing to stdout."""

    def run(settings: Settings, args: argparse.Namespace) -> int:
        return asyncio.run(_with_relay(settings, command, args))

    return run


async def _with_relay(settings: Settings, command: RelayCommand, args: argparse.Namespace) -> int:
    relay = await Relay.start(settings)
    try:
        # The running relay's policy over this shell's (``service.served_policy``); commands
        # that lean on it say so (``args.policy.note``).
        args.policy = served_policy.adopt(relay.settings, await served_policy.recorded(relay.store))
        relay.settings = args.policy.settings
        return await command(relay, args, sys.stdout)
    finally:
        await relay.close()


def print_table(rows: list[list[str]], out: TextIO, width: int | None = None) -> None:
    """Rows as left-aligned columns two spaces apart (the first row is the heading).

    With ``width``, the last column's text wraps under it, every word kept, so each line fits
    in ``width`` characters (the column keeps at least ``MIN_WRAP``; a longer word, a URL,
    stays whole on its own line); without, it is whole on its row.
    """
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    indent = sum(widths[:-1]) + 2 * (len(widths) - 1)
    room = None if width is None else max(width - indent, MIN_WRAP)
    for row in rows:
        cells = zip(row[:-1], widths, strict=False)
        head = "".join(cell.ljust(w) + "  " for cell, w in cells)
        last = row[-1]
        lines = (
            [" ".join(last.split())]
            if room is None
            else textwrap.wrap(last, room, break_long_words=False)
        )
        print((head + (lines[0] if lines else "")).rstrip(), file=out)
        for line in lines[1:]:
            print(" " * indent + line, file=out)
