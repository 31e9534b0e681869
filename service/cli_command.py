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
from collections.abc import Awaitable, Callable
from typing import TextIO

from service.relay import Relay
from service.settings import Settings

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
        return await command(relay, args, sys.stdout)
    finally:
        await relay.close()


def print_table(rows: list[list[str]], out: TextIO) -> None:
    """Rows as left-aligned columns two spaces apart (the first row is the heading)."""
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = zip(row, widths, strict=True)
        print("  ".join(cell.ljust(width) for cell, width in cells).rstrip(), file=out)
