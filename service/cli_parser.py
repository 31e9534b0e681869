"""``relay``'s argument parser: a wrong command line is one line on stderr and exit status 2.

argparse's own answer to a wrong value is the whole usage block, then the error: at 3 a.m. the
line that matters is the last of six. ``RelayArgumentParser`` says only that line, naming the
command and pointing at its ``--help``. Sub-commands' parsers are of the same class (argparse
makes them with the class of the parser they hang from).

Exit statuses, for every command: 0 done; 2 the command line or a value in it is wrong (a bad
flag, a bad value, an unknown ID: nothing was done); 1 the command ran and did not succeed (a
replay that replayed nothing, a simulated callback never accepted, a store that failed).
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

#: The exit status of a wrong command line or value.
USAGE_ERROR = 2


def one_line(text: str) -> str:
    """``text`` on one line: whatever a message carries (a pasted value with newlines...)."""
    return " ".join(text.split())


class RelayArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line: ``relay <command>: <what>``."""

    def error(self, message: str) -> NoReturn:
        print(
            f"{self.prog}: {one_line(message)} (see {self.prog} --help)",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(USAGE_ERROR)
