"""``relay --help`` that answers at 3 a.m.: every flag says its default, and which ``RELAY_*``
variable it stands for.

``document_defaults`` walks the finished parser and completes each optional flag's help with
``[default: ...]`` when its author did not write one, so no flag is left without.
"""

from __future__ import annotations

import argparse
import re

_SAYS_DEFAULT = re.compile(r"\[[^\]]*default[^\]]*\]")


def _default_text(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction):
        return "off"
    if isinstance(action, argparse._StoreFalseAction):
        return "on"
    default = action.default
    if default is None or default == [] or default is argparse.SUPPRESS:
        return "none"
    return str(default).replace("%", "%%")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its full name, ``relay deliveries list`` included."""
    found = {"relay": parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for full, nested in subcommands(sub).items():
                    suffix = full.removeprefix("relay")
                    found[f"relay {name}{suffix}".rstrip()] = nested
    return found


def document_defaults(parser: argparse.ArgumentParser) -> None:
    for sub in subcommands(parser).values():
        for action in sub._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            help_text = action.help or ""
            if not _SAYS_DEFAULT.search(help_text):
                action.help = f"{help_text} [default: {_default_text(action)}]".strip()
